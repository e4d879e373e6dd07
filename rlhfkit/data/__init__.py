"""Data: row schemas and validation, loading, chat templates and masks, truncation, batching, packing, pair encoding,
curation.

Names are imported on first use (PEP 562): `rlhfkit --help` and the pipeline's stage graph read and write rows without
loading torch, which batching (collate, pairs) needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ChatFormatter": "rlhfkit.data.templates",
    "CurationReport": "rlhfkit.data.curation",
    "DataError": "rlhfkit.data.schemas",
    "Encoded": "rlhfkit.data.templates",
    "EncodedPair": "rlhfkit.data.pairs",
    "Example": "rlhfkit.data.schemas",
    "IGNORE_INDEX": "rlhfkit.data.collate",
    "Message": "rlhfkit.data.schemas",
    "PreferenceExample": "rlhfkit.data.schemas",
    "PromptExample": "rlhfkit.data.schemas",
    "SFTExample": "rlhfkit.data.schemas",
    "StepExample": "rlhfkit.data.schemas",
    "TruncationReport": "rlhfkit.data.templates",
    "UnpairedExample": "rlhfkit.data.schemas",
    "UnpairedRow": "rlhfkit.data.pairs",
    "collate_pair_batch": "rlhfkit.data.pairs",
    "collate_scored_pairs": "rlhfkit.data.pairs",
    "group_by_prompt": "rlhfkit.data.pairs",
    "PairRow": "rlhfkit.data.pairs",
    "collate_pairs": "rlhfkit.data.collate",
    "collate_sft": "rlhfkit.data.collate",
    "curate": "rlhfkit.data.curation",
    "dedupe_exact": "rlhfkit.data.curation",
    "dedupe_near": "rlhfkit.data.curation",
    "encode_all": "rlhfkit.data.pairs",
    "encode_pairs": "rlhfkit.data.pairs",
    "encode_unpaired": "rlhfkit.data.pairs",
    "filter_length": "rlhfkit.data.curation",
    "load_examples": "rlhfkit.data.io",
    "load_train_eval": "rlhfkit.data.sources",
    "pack_sequences": "rlhfkit.data.collate",
    "pad_batch": "rlhfkit.data.collate",
    "read_rows": "rlhfkit.data.io",
    "resolve_data_path": "rlhfkit.data.sources",
    "scrub_pii": "rlhfkit.data.curation",
    "scrub_text": "rlhfkit.data.curation",
    "train_eval_split": "rlhfkit.data.io",
    "write_jsonl": "rlhfkit.data.io",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'rlhfkit.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


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
    "StepExample",
    "TruncationReport",
    "UnpairedExample",
    "UnpairedRow",
    "collate_pair_batch",
    "collate_scored_pairs",
    "group_by_prompt",
    "PairRow",
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
