"""Data: row schemas and validation, loading, chat templates and masks, truncation, batching, packing, curation."""

from rlhfkit.data.collate import IGNORE_INDEX, collate_pairs, collate_sft, pack_sequences, pad_batch
from rlhfkit.data.curation import (
    CurationReport,
    curate,
    dedupe_exact,
    dedupe_near,
    filter_length,
    scrub_pii,
    scrub_text,
)
from rlhfkit.data.io import load_examples, read_rows, train_eval_split, write_jsonl
from rlhfkit.data.pairs import (
    EncodedPair,
    UnpairedRow,
    collate_pair_batch,
    encode_all,
    encode_pairs,
    encode_unpaired,
)
from rlhfkit.data.schemas import (
    DataError,
    Example,
    Message,
    PreferenceExample,
    PromptExample,
    SFTExample,
    UnpairedExample,
)
from rlhfkit.data.sources import load_train_eval, resolve_data_path
from rlhfkit.data.templates import ChatFormatter, Encoded, TruncationReport

__all__ = [
    "IGNORE_INDEX",
    "ChatFormatter",
    "CurationReport",
    "DataError",
    "Encoded",
    "EncodedPair",
    "Example",
    "Message",
    "PreferenceExample",
    "PromptExample",
    "SFTExample",
    "TruncationReport",
    "UnpairedExample",
    "UnpairedRow",
    "collate_pair_batch",
    "encode_all",
    "encode_pairs",
    "encode_unpaired",
    "load_train_eval",
    "resolve_data_path",
    "collate_pairs",
    "collate_sft",
    "curate",
    "dedupe_exact",
    "dedupe_near",
    "filter_length",
    "load_examples",
    "pack_sequences",
    "pad_batch",
    "read_rows",
    "scrub_pii",
    "scrub_text",
    "train_eval_split",
    "write_jsonl",
]
