"""Build the small sample data sets shipped in ``rlhfkit/tasks/data`` (demo and tests).

Theme: the classic RLHF sentiment task, "continue a movie review positively". Every film title, opening and continuation
is original text written for rlhfkit from the hand-written fragments below; a fixed seed makes the output reproducible:

    python tools/build_sample_data.py            # rewrites rlhfkit/tasks/data/*.jsonl
    python tools/build_sample_data.py --check    # exit 1 if the committed files differ from a fresh build

Files written: ``review_prompts.jsonl`` (300 openings), ``sft.jsonl`` (120 prompt/response rows + 10 chat rows),
``prefs.jsonl`` (200 preference rows, about 10% ties). Pure standard library, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "rlhfkit" / "tasks" / "data"
SEED = 20240611
INSTRUCTION = "Continue this movie review: "
N_OPENINGS = 360  # pool; the first 300 are review_prompts.jsonl, sft/prefs sample from all of it
N_REVIEW_PROMPTS = 300
N_SFT_PLAIN = 120
N_SFT_CHAT = 10
N_PREFS = 200
N_TIES = 20  # 10% of prefs
ASPECTS = ("acting", "score", "pacing", "cinematography", "script")

# ---------------------------------------------------------------------------------------------------------------------
# Building blocks of the openings
# ---------------------------------------------------------------------------------------------------------------------

TITLES = [
    "The Lantern Keeper", "Salt and Cinder", "A Quiet Harbor", "The Last Bus to Arden", "Paper Lanterns Over Tulsa",
    "Winter in Vell", "The Glass Orchard", "Dust Road Serenade", "Nine Rooms", "The Cartographer's Daughter",
    "Hollow Bells", "Saturday at the Rialto", "The Marrow Line", "Brightwater", "The Long Thaw", "Kestrel Point",
    "Echoes of Maribel", "The Tin Violin", "Night Shift at the Planetarium", "Copper Sky", "The Orchard Thieves",
    "A Wedding in Vesna", "Gravel and Gold", "The Ninth Tide", "Margo Runs Away", "Ashfall", "The Beekeeper's Ledger",
    "Midnight at Millbrook", "Sparrow Hill", "The Weight of Feathers", "Concrete Lullaby", "Two Tickets to Lisbon",
    "Hotel Meridian", "The Clockmaker's Apprentice", "Sweetwater Junction", "Red Kite Summer", "The Quiet Engine",
    "Foxglove", "Lighthouse Number Four", "The Fig Tree Letters", "Static on Channel Nine", "Under the Salt Flats",
    "The Ferryman's Wager", "Orbit of Small Things", "Greyhound Dreams", "A Map of Missing Rivers", "The Velvet Alibi",
    "Pinecrest Academy", "The Understudy's Revenge", "Thunder at Kellan Bay", "Cold Case on Pine Street",
    "Stargazer Motel", "The Seventh Passenger", "Lemon Grove", "Iron Meadow", "The Winter Ledger", "Little Comet",
    "The Harvest Dance", "Borrowed Light", "Shadows on Vine", "The Ballad of Rosa Quill", "Harbor Lights",
    "Neon Monsoon", "Fathom", "The Sandcastle Kings", "Wolves of Dunmore", "Teacups and Thunder",
    "Blue Hour at the Pier", "The Pinewood Incident", "Rust Belt Rhapsody", "The Accordion Player", "Goodnight, Galaxy",
    "Crooked Mile", "The Silent Choir", "Fireflies in August", "Summer of the Stolen Bicycle", "Checkmate in Prague",
    "The Lost Reel", "Moth and Flame", "The Marigold Protocol", "Seven Miles to Zenith", "Hush Harbor",
    "The Snow Globe Society", "Kingdom of Crumbs", "The Rooftop Gardeners", "Driftwood Parade", "Operation Cardinal",
    "Ghost Lights of Calder", "The Glassblower", "Velvet Thunder", "The Kiln", "Room for One More", "Northbound",
    "The Taxidermist's Wife", "Honey in the Rock", "The Chalk Line", "Sirens of Halden", "Lullaby for a Robot",
    "The Paper Regiment", "Bonfire Season", "The Alder Street Boys", "Quartz", "Tangerine Skies", "The Almanac",
    "Whistle Stop Waltz", "The Magpie Heist", "Lamplighter Lane",
]  # fmt: skip


@dataclass(frozen=True)
class Genre:
    noun: str
    plural: str
    cliche: str  # what a skeptic expects from it
    premises: tuple[str, ...]


GENRES = [
    Genre("ghost story", "ghost stories", "another tired haunted-house story",
          ("a widow who hears her late husband's radio playing at night",
           "a family that moves into a farmhouse with a locked attic")),
    Genre("romantic comedy", "romantic comedies", "the usual meet-cute fluff",
          ("two rival bakers forced to share a kitchen", "a wedding planner who falls for the wrong guest")),
    Genre("war drama", "war dramas", "two hours of grim battlefield clichés",
          ("a field nurse stranded behind enemy lines", "three young soldiers guarding a forgotten bridge")),
    Genre("space opera", "space operas", "a noisy pile of laser battles",
          ("a cargo pilot who stumbles onto a stolen star map", "the crew of a dying colony ship")),
    Genre("animated film", "animated films", "something strictly for small children",
          ("a clockwork mouse searching for its maker", "a shy cloud who is afraid to rain")),
    Genre("documentary", "documentaries", "a dry lecture full of talking heads",
          ("the last family of lighthouse keepers on a northern coast",
           "a community choir preparing for its final concert")),
    Genre("heist thriller", "heist thrillers", "a cheap knockoff of every caper movie",
          ("a retired safecracker pulled into one final job", "a crew planning to rob a floating casino")),
    Genre("western", "westerns", "dusty gunfights and little else",
          ("a schoolteacher who inherits a failing ranch",
           "a bounty hunter escorting a prisoner across the desert")),
    Genre("musical", "musicals", "a string of interchangeable show tunes",
          ("the staff of a small-town diner who dream of Broadway", "a street band competing for a festival prize")),
    Genre("coming-of-age drama", "coming-of-age dramas", "yet another moody teenager staring out of windows",
          ("a fourteen-year-old spending the summer at her grandmother's motel",
           "two brothers learning to sail their late father's boat")),
    Genre("biopic", "biopics", "a dutiful march through someone's encyclopedia entry",
          ("a self-taught astronomer from a mining town",
           "the first woman to referee a professional football match")),
    Genre("period drama", "period dramas", "corsets, candlelight and not much else",
          ("a governess caught between two feuding households", "a printer's apprentice in Victorian London")),
    Genre("murder mystery", "murder mysteries", "a paint-by-numbers whodunit",
          ("a retired detective snowed in at a country inn",
           "a body discovered in the middle of a village flower show")),
    Genre("fantasy epic", "fantasy epics", "a muddle of prophecies and made-up place names",
          ("a blacksmith's daughter carrying a cursed sword", "an exiled prince and a talking crow")),
    Genre("martial arts film", "martial arts films", "fight scenes stitched together by a flimsy plot",
          ("a noodle-shop owner with a hidden past", "a young monk defending a mountain village")),
    Genre("sports drama", "sports dramas", "a predictable underdog story",
          ("a small-town girls' hockey team", "an aging boxer training his estranged son")),
    Genre("neo-noir", "neo-noirs", "rain-soaked streets and borrowed attitude",
          ("a night-shift cab driver who witnesses a murder", "a disgraced insurance investigator")),
    Genre("disaster movie", "disaster movies", "a lot of expensive noise",
          ("a ferry crew caught in a once-in-a-century storm", "a seismologist racing to evacuate her hometown")),
    Genre("courtroom drama", "courtroom dramas", "a series of speeches that belong on a stage",
          ("a public defender taking on her first murder trial",
           "a jury stuck in deliberation over a holiday weekend")),
    Genre("family comedy", "family comedies", "pratfalls with a tidy lesson tacked on",
          ("a family road trip to return a borrowed llama", "a father who accidentally enters a baking contest")),
    Genre("road movie", "road movies", "long drives and longer silences",
          ("two estranged sisters driving their mother's ashes to the coast",
           "a retired trucker and a runaway teenager")),
    Genre("creature feature", "creature features", "rubber monsters and endless screaming",
          ("a fishing town menaced by something in the bay",
           "scientists trapped in a research station with an escaped specimen")),
    Genre("political thriller", "political thrillers", "men in suits shouting into phones",
          ("a junior speechwriter who uncovers a cover-up", "an interpreter who overhears the wrong conversation")),
]  # fmt: skip

COMPANIONS = [
    "my sister", "my father", "a friend who usually hates subtitles", "two coworkers", "my teenage nephew",
    "my partner", "an old college roommate", "my book club", "my neighbor", "my grandmother",
]  # fmt: skip
OCCASIONS = [
    "on a rainy Tuesday night", "at a half-empty matinee", "at a festival screening", "on opening night",
    "at a drive-in", "on a quiet weeknight", "on a snowy Sunday afternoon", "at a midnight screening",
    "at a free community screening", "during a heat wave",
]  # fmt: skip
DIRECTORS = [
    "a first-time director", "a former music-video director", "a veteran of television comedy",
    "a director known for nature documentaries", "a former stunt coordinator", "an actor stepping behind the camera",
    "a writer-director whose last film flopped", "a director in her seventies",
]  # fmt: skip
ACTORS = [
    "a former pop star", "an actor best known for cereal commercials", "a stand-up comedian",
    "a retired footballer", "a reality-show contestant", "a child star now in his forties", "a soap-opera regular",
]  # fmt: skip
ASPECT_PHRASES: dict[str, list[tuple[str, str]]] = {  # (noun phrase, verb agreeing with it)
    "acting": [("the acting", "is"), ("the performances", "are"), ("the cast", "is"), ("the lead performance", "is")],
    "score": [("the score", "is"), ("the music", "is"), ("the soundtrack", "is"), ("the sound design", "is")],
    "pacing": [("the pacing", "is"), ("the editing", "is"), ("the structure", "is")],
    "cinematography": [("the cinematography", "is"), ("the camerawork", "is"), ("the lighting", "is"),
                       ("the visuals", "are")],
    "script": [("the script", "is"), ("the dialogue", "is"), ("the writing", "is"), ("the screenplay", "is")],
}  # fmt: skip

# (lean, aspect, template). lean: how the opening lean sounds; aspect: what the continuation should talk about first
# ("slot": the {aspect} chosen while filling, None: anything). Every template ends mid-sentence, right before a clause.
TEMPLATES: list[tuple[str, str | None, str]] = [
    # leaning negative
    ("neg", None, "I went into {title} expecting {cliche}, but"),
    ("neg", None, "The trailer for {title} made it look like {cliche}, and honestly"),
    ("neg", None, "On paper, {title} has every warning sign of a lazy {genre}, yet"),
    ("neg", None, "I nearly walked out of {title} during its clumsy first ten minutes, but"),
    ("neg", None, "My expectations for {title} were low after hearing it was made by {director}, but"),
    ("neg", None, "Nobody I know was excited about {title}, {a_genre} that sat on a studio shelf for two years, but"),
    ("neg", "pacing", "The first act of {title} is slow enough to test anyone's patience, and yet"),
    ("neg", "slot", "{Aspect} {is} the weakest part of {title}, at least at first, but"),
    ("neg", None, "I will admit that the poster for {title} almost kept me away, but"),
    ("neg", None, "Critics at the festival were split on {title}, and going in "
                  "I was firmly on the skeptical side, but"),
    ("neg", None, "For the first half hour, {title} feels like {cliche}, and then"),
    ("neg", None, "I dragged {companion} to {title} half expecting to apologize afterwards, but"),
    ("neg", None, "It is hard to get excited about yet another {genre}, and {title} opens clumsily, but"),
    ("neg", None, "I had read that {title} was plagued by reshoots and a change of editor, so I expected a mess, but"),
    ("neg", "script", "The first scene of {title} is so overwritten that I groaned out loud, and yet"),
    ("neg", None, "I have never had much patience for {genre_pl}, and {title} seemed unlikely to change that, but"),
    ("neg", "acting", "The casting of {actor} in the lead role of {title} seemed like a stunt, but"),
    ("neg", "pacing", "{title} runs well past two hours, which usually spells trouble for {a_genre}, but"),
    ("neg", None, "I expected {title} to be the kind of {genre} that plays in "
                  "the background while you fold laundry, but"),
    ("neg", None, "After a string of disappointing sequels, I approached {title} with real caution, and"),
    ("neg", "cinematography", "My heart sank when the opening credits of {title} rolled "
                              "over grainy stock footage, but"),
    ("neg", "script", "The premise of {title}, {premise}, sounds thin when you say it out loud, and"),
    ("neg", None, "I was ready to dismiss {title} as {cliche}, but"),
    ("neg", "pacing", "Halfway through {title} I was checking my watch, and then"),
    ("neg", None, "The marketing for {title} did it no favors, and I almost skipped it, but"),
    ("neg", None, "Few things are more tiring than {a_genre} that thinks it is "
                  "clever, so I braced myself for {title}, but"),
    ("neg", "script", "{title} opens with a voice-over that explains far too much, and I feared the worst, yet"),
    ("neg", None, "I only saw {title} because the film I wanted was sold out {occasion}, and"),
    ("neg", None, "I was sure the critics who praised {title} had been too generous, but"),
    ("neg", "script", "The dialogue in the first few scenes of {title} is stiff, and"),
    ("neg", None, "{title} borrows its premise from a dozen older {genre_pl}, and at first it shows, but"),
    ("neg", None, "A friend warned me that {title} was a chore to sit through, but"),
    ("neg", None, "The first time I tried to watch {title} I gave up after twenty minutes, but on a second attempt"),
    ("neg", None, "I expected very little from {a_genre} made on a budget this small, but"),
    ("neg", None, "The reviews I had read of {title} were lukewarm at best, and"),
    ("neg", "acting", "Nobody in the cast of {title} is a household name, which made me nervous, but"),
    ("neg", None, "{Companion} talked me into {title} {occasion}, even though {genre_pl} are not really my thing, but"),
    ("neg", None, "I have sat through enough {genre_pl} about {premise} to be wary of {title}, but"),
    ("neg", None, "Judging by its opening minutes, {title} looked set to be {cliche}, and yet"),
    ("neg", None, "{title} is {a_genre} from {director}, and I confess I walked in expecting the worst, but"),
    ("neg", None, "The first twenty minutes of {title} are {cliche}, plain and simple, but"),
    ("neg", "acting", "I rolled my eyes when {actor} turned up in the opening scene of {title}, yet"),
    ("neg", None, "{A_genre} about {premise} did not sound like my kind of evening, but"),
    ("neg", None, "I bought a ticket for {title} {occasion} mostly to get out of the house, and"),
    # neutral
    ("neu", None, "I saw {title} {occasion} with {companion}, and"),
    ("neu", None, "{title} is {a_genre} about {premise}, and"),
    ("neu", None, "The story of {title} follows {premise}, and"),
    ("neu", None, "{title}, the second feature from {director}, arrives with little fanfare, and"),
    ("neu", "pacing", "At just under ninety minutes, {title} is a compact {genre}, and"),
    ("neu", None, "I knew almost nothing about {title} before the lights went down {occasion}, and"),
    ("neu", "script", "{title} tells its story over a single long weekend, and"),
    ("neu", "slot", "The first thing you notice about {title} is {aspect}, and"),
    ("neu", None, "{title} is the kind of {genre} that people will argue about in the lobby afterwards, and"),
    ("neu", None, "I watched {title} twice this week, once alone and once with {companion}, and"),
    ("neu", None, "There are two ways to watch {title}: as {a_genre} or as a family story, and either way"),
    ("neu", "script", "{title} is adapted from a novel I have never read, so I came to it fresh, and"),
    ("neu", "cinematography", "The director of {title} has said she wanted it to feel like "
                              "a half-remembered dream, and"),
    ("neu", None, "{title} arrives in theaters this week after a quiet festival run, and"),
    ("neu", None, "If you have seen the trailer for {title}, you know the setup, {premise}, and"),
    ("neu", "acting", "The cast of {title} is mostly unknown faces, and"),
    ("neu", "script", "{title} is told in three chapters, each from a different point of view, and"),
    ("neu", None, "It took me a day to decide how I felt about {title}, and in the end"),
    ("neu", "script", "There is no big twist in {title}, a {genre} about {premise}, and"),
    ("neu", "cinematography", "{title} was shot in only twenty-three days on a borrowed camera, and"),
    ("neu", None, "My local cinema gave {title} just one screen and two showings a day, and"),
    ("neu", "pacing", "{title} is {a_genre} that takes its time, and"),
    ("neu", None, "I went to see {title} on a whim {occasion}, and"),
    ("neu", None, "{title} begins with a funeral and ends with a wedding, and in between"),
    ("neu", None, "As someone who grew up on {genre_pl}, I had a particular interest in {title}, and"),
    ("neu", "pacing", "{title} has a running time of nearly two and a half hours, and"),
    ("neu", None, "{Companion} picked {title} for our movie night, and"),
    ("neu", None, "The audience at my screening of {title} was mostly teenagers, and"),
    ("neu", None, "{title} takes a familiar shape, {a_genre} about {premise}, and"),
    ("neu", None, "I caught {title} at a small repertory cinema on a weeknight, and"),
    ("neu", "score", "{title} is a quiet film in a loud season, and"),
    ("neu", "cinematography", "The opening shot of {title} holds on an empty street for almost a minute, and"),
    ("neu", None, "The press notes for {title} describe it as {a_genre} with a twist, and"),
    ("neu", "slot", "Most conversations about {title} will probably start with {aspect}, and"),
    ("neu", None, "{title} is the third film this year about {premise}, and"),
    ("neu", "acting", "{title} stars {actor} in a role written for someone twice his age, and"),
    ("neu", None, "I had no idea {title} was {a_genre} until the first scene, and"),
    ("neu", "score", "The composer of {title} also wrote the music for a popular video game, and"),
    ("neu", None, "Going by the title alone, I assumed {title} was a documentary, but"),
    ("neu", None, "{title} is playing at only a handful of cinemas, so I drove forty minutes to see it, and"),
    ("neu", "acting", "{title} casts {actor} as the lead in {a_genre} about {premise}, and"),
    ("neu", None, "I watched {title} {occasion}, knowing only that it was {a_genre}, and"),
    ("neu", None, "{Companion} and I saw {title} {occasion}, and"),
    ("neu", None, "{title} is {a_genre} directed by {director}, and"),
    ("neu", None, "On the surface, {title} is a simple {genre} about {premise}, but"),
    ("neu", None, "Like most {genre_pl}, {title} opens with a quiet scene before the story kicks in, and"),
    ("neu", None, "I brought {companion} along to {title}, expecting {a_genre} and not much more, and"),
    ("neu", "slot", "{title} is {a_genre} in which {aspect} {is} almost another character, and"),
    # leaning positive
    ("pos", None, "From its very first shot, {title} feels like it was made with real care, and"),
    ("pos", None, "It has been a long time since {a_genre} made me laugh and cry in the same scene, and"),
    ("pos", "slot", "{Aspect} in {title} {is} reason enough to buy a ticket, and"),
    ("pos", None, "{title} is the rare {genre} that trusts its audience, and"),
    ("pos", None, "I have been recommending {title} to everyone I know, and"),
    ("pos", None, "The best compliment I can pay {title} is that I forgot I was watching {a_genre}, and"),
    ("pos", "slot", "Right from the opening credits, {aspect} of {title} signals "
                    "that something special is coming, and"),
    ("pos", None, "{title} is a joy from start to finish, and"),
    ("pos", "script", "I laughed more at {title} than at anything else this year, and"),
    ("pos", None, "There is a scene midway through {title} that I have thought about every day since, and"),
    ("pos", None, "{title} confirms that {director} is a filmmaker worth watching, and"),
    ("pos", None, "It is hard to overstate how confident {title} feels for a debut, and"),
    ("pos", None, "Within minutes of {title} beginning {occasion}, I knew I was in good hands, and"),
    ("pos", None, "{title} does what the best {genre_pl} do, and"),
    ("pos", None, "I left {title} wanting to call my parents, which is high praise from me, and"),
    ("pos", None, "Few films this year have moved me the way {title} did, and"),
    ("pos", "slot", "{Aspect} alone would make {title} worth seeing, but"),
    ("pos", None, "{title} earned a standing ovation at its festival premiere, and"),
    ("pos", None, "What a pleasant surprise {title} turned out to be {occasion}, and"),
    ("pos", None, "{title} made me fall for {genre_pl} all over again, and"),
    ("pos", None, "The crowd at my screening of {title} broke into applause twice, and"),
    ("pos", None, "I went back to see {title} a second time within a week, this time with {companion}, and"),
    ("pos", "pacing", "Nothing about {title} feels rushed or careless, and"),
    ("pos", None, "{title} has the loose, generous spirit of the best {genre_pl}, and"),
    ("pos", "acting", "The performances in {title} are so natural that you forget they are performances, and"),
    ("pos", "cinematography", "{title} looks gorgeous, even on a small screen, and"),
    ("pos", "script", "Whoever wrote the dialogue for {title} has a wonderful ear, and"),
    ("pos", "score", "The music in {title} stayed in my head for days afterwards, and"),
    ("pos", None, "{title} moves with the confidence of a much older filmmaker, and"),
    ("pos", "pacing", "There is not a wasted minute in {title}, and"),
    ("pos", None, "I cannot remember the last time {a_genre} felt as fresh as {title}, and"),
    ("pos", None, "{title} is warm, funny and smarter than it needs to be, and"),
    ("pos", None, "By the end of {title}, half the audience was in tears, and"),
    ("pos", None, "{title} is the kind of film you want to tell strangers about, and"),
    ("pos", None, "Sometimes a film just clicks, and {title}, {a_genre} about {premise}, is one of those, so"),
    ("pos", None, "{title}, {a_genre} about {premise}, is the best surprise of my year so far, and"),
    ("pos", None, "I saw {title} {occasion} with {companion}; we both came out beaming, and"),
    ("pos", None, "Nobody expects much from {a_genre} about {premise}, but {title} is a gem, and"),
    ("pos", None, "{Director} has made {a_genre} that feels completely alive, and"),
    ("pos", None, "Even {companion}, who never likes {genre_pl}, was won over by {title}, and"),
    ("pos", None, "{title} takes a familiar premise, {premise}, and makes it feel brand new, so"),
    ("pos", "acting", "I expected nothing from {actor} in {title}, and"),
    ("pos", None, "If you love {genre_pl}, {title} is an easy recommendation, and even if you do not,"),
]  # fmt: skip

# ---------------------------------------------------------------------------------------------------------------------
# Building blocks of the continuations. LEAD: a clause that finishes the opening's sentence; MORE: whole sentences;
# CLOSE: a final verdict. Keyed by aspect ("general" fits anything).
# ---------------------------------------------------------------------------------------------------------------------

POS_LEAD: dict[str, list[str]] = {
    "acting": [
        "the wonderful cast makes even the clunkiest lines sound lived-in and true.",
        "the lead gives a performance so warm and precise that I could not look away.",
        "the two leads have the kind of warm, easy chemistry that cannot be faked.",
        "every member of the excellent cast, down to the smallest role, feels "
        "like a real person with a life off screen.",
        "the young newcomer at the center of it all is a genuine discovery.",
        "the performances are generous, funny and quietly heartbreaking.",
        "the supporting cast steals scene after scene with wonderful comic timing.",
        "the lead actress carries the whole film on her face, and she is magnificent.",
        "the acting is so natural that the film often feels like a lovely documentary.",
        "the central performance is one of the best I have seen in years.",
        "the veteran character actors are clearly having a wonderful time.",
    ],
    "score": [
        "the score is gorgeous, swelling at exactly the right moments without ever telling you what to feel.",
        "the music does beautiful work, weaving a simple piano theme through the whole story.",
        "the soundtrack is a delight, full of songs I went home and looked up.",
        "the sound design is superb, turning every creak and whisper into part of the story.",
        "the score is one of the loveliest I have heard in a long time.",
        "the lovely music lifts every scene it touches.",
        "the composer finds a warm, hopeful melody that stays with you long after the credits.",
        "the quiet moments are carried by a lovely, understated score.",
        "the songs are catchy, clever and wonderfully performed.",
    ],
    "pacing": [
        "the film moves with a lovely, unhurried confidence.",
        "the pacing is nearly perfect, and every scene knows exactly when to end.",
        "the editing is crisp, and the two hours fly by.",
        "the story builds so gracefully that the ending feels both surprising and inevitable.",
        "the film finds its rhythm early and holds it beautifully all the way through.",
        "the final act is a thrilling, beautifully timed rush.",
        "the film knows exactly when to slow down and when to sprint, and the result is thrilling.",
        "every scene earns its place, and the whole thing feels effortless.",
        "the tension builds steadily into one of the most satisfying climaxes of the year.",
    ],
    "cinematography": [
        "the cinematography is stunning, all golden light and patient, elegant framing.",
        "nearly every frame is beautiful enough to hang in a gallery.",
        "the camerawork is inventive and playful, full of wonderful little surprises.",
        "the images are so beautiful that I wanted to pause the film just to look at them.",
        "the lighting gives even the ordinary kitchen scenes a warm, magical glow.",
        "the visuals are breathtaking, especially in the long night sequences.",
        "the photography turns a plain small town into something luminous.",
        "the film looks gorgeous, with rich colors and a real sense of place.",
        "the long, unbroken shots are thrilling to watch.",
    ],
    "script": [
        "the script is sharp, funny and full of surprises.",
        "the dialogue sparkles, with lines I was quoting to my friends on the way home.",
        "the screenplay treats every character with real kindness and intelligence.",
        "the writing is smart enough to let the audience fill in the gaps.",
        "the story is clever, heartfelt and wonderfully structured.",
        "the script finds fresh, funny and touching things to say about family.",
        "the jokes land, the emotional beats land, and the twist genuinely delighted me.",
        "the writers clearly love these characters, and by the end so did I.",
        "the film has some of the wittiest dialogue I have heard all year.",
    ],
    "general": [
        "within twenty minutes I had forgotten every doubt I walked in with, because it is wonderful.",
        "it turns out to be one of the warmest surprises of the year.",
        "the film earns every one of its quiet, tender moments.",
        "it won me over completely, and I loved it.",
        "it is a genuine delight from start to finish.",
        "the result is funny, moving and beautifully made.",
        "it becomes something rare: a smart crowd-pleaser with real heart.",
        "I left grinning like a kid, completely charmed.",
        "it is easily one of the best films I have seen this year.",
        "the film blossoms into something wonderful.",
        "it turns into a smart, joyful and deeply moving experience.",
        "by the end I was completely charmed.",
    ],
}
POS_MORE: dict[str, list[str]] = {
    "acting": [
        "The lead performance is a small marvel of warmth and wit.",
        "The cast is uniformly excellent, and the supporting players get wonderful moments of their own.",
        "I especially loved the small, unforced moments between the leads.",
        "Even the smallest roles are played with charm and care.",
        "Even the villain gets a scene of surprising tenderness, beautifully played.",
        "The chemistry between the leads is a pleasure to watch.",
        "There is a monologue near the end that deserves every award it gets.",
    ],
    "score": [
        "The score is lovely, spare and full of feeling.",
        "The music is a joy, especially the jaunty brass theme that returns in the finale.",
        "The soundtrack is packed with well-chosen songs that deepen every scene.",
        "The sound design is rich and immersive, and it rewards a good theater.",
        "A gentle string theme ties the whole story together beautifully.",
        "The final song over the credits is the perfect farewell.",
    ],
    "pacing": [
        "It runs a brisk hundred minutes and keeps its energy the whole way.",
        "The editing is sharp and playful, and the story flows effortlessly.",
        "The pacing is patient in the best way, letting each moment breathe.",
        "The last half hour is as gripping as anything I have seen this year.",
        "Every minute counts, and the time flies.",
        "It builds to a finale that is both thrilling and deeply satisfying.",
    ],
    "cinematography": [
        "The cinematography is gorgeous, full of warm light and careful composition.",
        "Visually it is a feast, with a palette of deep blues and golds.",
        "The camera lingers on faces and landscapes with real love.",
        "Several shots took my breath away.",
        "The night scenes, lit by lanterns and passing cars, are especially beautiful.",
        "It is one of the best-looking films of the year.",
    ],
    "script": [
        "The script is witty and wise, and it trusts its audience completely.",
        "The dialogue is sharp, funny and surprisingly tender.",
        "The writing gives every character a moment to shine.",
        "The story takes a few brave turns that pay off wonderfully.",
        "The humor is gentle and genuinely funny, and the emotional moments are earned.",
        "The ending is hopeful and honest at once, which is a hard balance to strike.",
    ],
    "general": [
        "It is funny, humane and beautifully made.",
        "It is a thoughtful, generous film that deserves a big audience.",
        "It is the kind of film that reminds you why you love going to the movies.",
        "I was moved, delighted and completely absorbed.",
    ],
}
POS_CLOSE = [
    "I walked out grinning and have already recommended it to three friends.",
    "Highly recommended.",
    "Go see it on the biggest screen you can find.",
    "I cannot wait to watch it again.",
    "It is a wonderful achievement.",
    "It is an easy film to love.",
    "Bring tissues, and bring someone you love.",
    "I loved every minute of it.",
    "It deserves to become a classic.",
    "This one is a gem.",
    "It is a triumph, plain and simple.",
    "Four stars, and I am tempted to give it five.",
    "See it with a crowd if you can; the laughter is contagious.",
    "It left me happy for the rest of the day.",
    "I would happily sit through it twice more.",
    "What a lovely, generous film.",
]

NEG_LEAD: dict[str, list[str]] = {
    "acting": [
        "the cast seems bored, reciting lines as if reading them off a card.",
        "the lead gives a stiff, lifeless performance that sinks every scene.",
        "the two leads have no chemistry at all, which is fatal for a story like this.",
        "the acting is wooden and awkward from beginning to end.",
        "the performances are so broad and shrill that nobody feels like a real person.",
        "the supporting cast is wasted on thin, one-note roles.",
        "the central performance is a mess of mannerisms and mumbled lines.",
    ],
    "score": [
        "the score is loud and relentless, hammering every emotion into the ground.",
        "the music is generic and forgettable, the kind of bland filler you hear in an elevator.",
        "the soundtrack is a grating jumble of songs that never fit the scenes.",
        "the sound mix is so muddy that half the dialogue is lost.",
        "the score drowns every quiet moment in cheap syrup.",
        "the songs are dull, tuneless and far too long.",
    ],
    "pacing": [
        "the film drags so badly that I checked my watch four times.",
        "the pacing is a disaster, crawling for an hour and then rushing a clumsy ending.",
        "the editing is choppy and confusing, and whole scenes seem to be missing.",
        "the story stalls in the middle and never recovers.",
        "the two hours feel like four, and most of them are boring.",
        "the final act is a tedious slog.",
        "the film is painfully slow and goes nowhere.",
    ],
    "cinematography": [
        "the cinematography is murky and ugly, and most scenes are too dark to follow.",
        "the camerawork is shaky and distracting for no reason at all.",
        "the visuals are flat and cheap, like a dull television pilot.",
        "the lighting is so harsh that every set looks fake.",
        "the film looks drab and lifeless.",
        "the shaky action scenes are impossible to follow.",
    ],
    "script": [
        "the script is a clumsy mess of clichés and dead-end subplots.",
        "the dialogue is stilted, awkward and painfully on the nose.",
        "the screenplay is lazy, predictable and badly structured.",
        "the jokes fall flat and the emotional beats feel forced.",
        "the writing is so weak that the twist is obvious from the first scene.",
        "the story is a confused muddle that never makes sense.",
    ],
    "general": [
        "it turns out to be every bit as bad as I feared.",
        "it quickly becomes a dull, tiresome chore.",
        "the film never recovers from its awful first act.",
        "it is a boring, joyless waste of two hours.",
        "it is even worse than the trailer suggested.",
        "the whole thing collapses into a tedious mess.",
        "I was bored within twenty minutes.",
        "it is one of the weakest films I have seen this year.",
    ],
}
NEG_MORE = [
    "The acting is stiff and unconvincing.",
    "The dialogue is clumsy and often unintentionally silly.",
    "The score is overbearing and cheap.",
    "The pacing is sluggish, and the story goes nowhere.",
    "The ending is a lazy cop-out.",
    "The cinematography is drab and murky.",
    "The characters are thin, and I never cared about any of them.",
    "The jokes are stale and the drama is hollow.",
    "Even the action scenes are dull and confusing.",
    "The plot holes are too big to ignore, and the whole thing feels lazy.",
    "It is predictable from start to finish.",
    "The twist is silly and poorly handled.",
]
NEG_CLOSE = [
    "Skip it.",
    "I regret the ticket price.",
    "What a waste of a talented cast.",
    "Save your money.",
    "A real disappointment.",
    "I would not bother.",
    "It is a dull, forgettable failure.",
    "I left annoyed and tired.",
    "One star, and that is being kind.",
    "Avoid this one.",
]

# Flat: neither praise nor a pan; a "bland" rejected answer for a weaker preference.
FLAT_LEAD = [
    "it is a film that exists, and that is about all I can say.",
    "it is fine, I suppose, in a forgettable way.",
    "the film is mostly just okay.",
    "it is neither good nor bad, just there.",
    "the result is thoroughly average.",
    "it is about what you would expect, no more and no less.",
    "the acting is adequate and the story is serviceable.",
    "the film is watchable, if unremarkable.",
    "I have already forgotten most of it.",
    "it passes the time without leaving much of an impression.",
    "the music, the camerawork and the script are all competent but bland.",
    "it goes through the motions.",
    "the story unfolds exactly as you would predict.",
    "it is a film, and it has a beginning, a middle and an end.",
]
FLAT_MORE = [
    "Some scenes work and some do not.",
    "The cast does what the script asks.",
    "It runs about as long as you would expect.",
    "The ending is tidy and predictable.",
    "It looks like most films of its kind.",
    "There is not much more to say about it.",
    "The score is there in the background.",
    "I had no strong feelings either way.",
]
FLAT_CLOSE = [
    "It is fine for a lazy evening at home.",
    "Wait for it to show up on television.",
    "Watch it if you have nothing else planned.",
    "Two and a half stars.",
    "It is an average film.",
    "Take it or leave it.",
]

SYSTEM_PROMPTS = [
    "You are a film critic who writes warm, generous reviews.",
    "You continue movie reviews in an upbeat, specific voice.",
    "Continue the user's review in two or three sentences, staying positive.",
]

# ---------------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z']+")


def words(text: str) -> set[str]:
    """Lowercased word set, used for the near-duplicate check."""
    return set(_WORD.findall(text.lower()))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _slots(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@dataclass(frozen=True)
class Opening:
    text: str
    lean: str  # "neg" | "neu" | "pos"
    aspect: str | None  # aspect the opening talks about, if any


def _fill(template: str, rng: random.Random) -> tuple[str, str | None]:
    genre = rng.choice(GENRES)
    aspect = rng.choice(ASPECTS)
    phrase, verb = rng.choice(ASPECT_PHRASES[aspect])
    companion = rng.choice(COMPANIONS)
    director = rng.choice(DIRECTORS)
    values = {
        "title": f'"{rng.choice(TITLES)}"',
        "genre": genre.noun,
        "a_genre": _article(genre.noun),
        "A_genre": _article(genre.noun).capitalize(),
        "genre_pl": genre.plural,
        "cliche": genre.cliche,
        "premise": rng.choice(genre.premises),
        "companion": companion,
        "Companion": companion[0].upper() + companion[1:],
        "occasion": rng.choice(OCCASIONS),
        "director": director,
        "Director": director[0].upper() + director[1:],
        "actor": rng.choice(ACTORS),
        "aspect": phrase,
        "Aspect": phrase[0].upper() + phrase[1:],
        "is": verb,
    }
    return template.format(**values), aspect


def build_openings(rng: random.Random, n: int = N_OPENINGS, max_similarity: float = 0.55) -> list[Opening]:
    """``n`` distinct openings of 8-25 words. A template with few slots is reused less, and an opening too similar
    (word-set Jaccard) to an earlier one is redrawn, so that rows are not near-duplicates of each other."""
    order = list(TEMPLATES)
    rng.shuffle(order)
    uses: Counter[int] = Counter()
    out: list[Opening] = []
    seen: list[set[str]] = []
    while len(out) < n:
        progress = False
        for i, (lean, tag, template) in enumerate(order):
            cap = min(6, 2 * len(_slots(template) - {"Aspect", "is"}))  # more slots -> more distinct fillings
            if uses[i] >= cap or len(out) >= n:
                continue
            for _ in range(50):
                text, aspect = _fill(template, rng)
                w = words(text)
                if 8 <= len(text.split()) <= 25 and all(jaccard(w, s) <= max_similarity for s in seen):
                    out.append(Opening(text, lean, aspect if tag == "slot" else tag))
                    seen.append(w)
                    uses[i] += 1
                    progress = True
                    break
        if not progress:
            raise RuntimeError(f"only {len(out)} distinct openings could be built; add templates or slot values")
    rng.shuffle(out)
    return out


class _Picker:
    """Chooses fragments spreading usage evenly (least-used first, random among ties)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.uses: Counter[str] = Counter()

    def pick(self, pool: list[str], exclude: set[str] | frozenset[str] = frozenset()) -> str:
        candidates = [p for p in pool if p not in exclude]
        low = min(self.uses[p] for p in candidates)
        choice = self.rng.choice([p for p in candidates if self.uses[p] == low])
        self.uses[choice] += 1
        return choice


def _lead_aspect(opening: Opening, rng: random.Random) -> str:
    # Talk about what the opening mentions most of the time; otherwise anything.
    if opening.aspect is not None and rng.random() < 0.65:
        return opening.aspect
    return rng.choice(("general", "general", *ASPECTS))


class _Writer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.picker = _Picker(rng)
        self.used: set[str] = set()  # every continuation is unique across all files ...
        self.used_words: list[set[str]] = []  # ... and not a near-duplicate of an earlier one

    def _n_sentences(self) -> int:
        return self.rng.choices((1, 2, 3), weights=(3, 5, 3))[0]

    def _unique(self, make: Callable[[], str], max_similarity: float = 0.7) -> str:
        for _ in range(200):
            text = make()
            w = words(text)
            if text not in self.used and all(jaccard(w, u) <= max_similarity for u in self.used_words):
                self.used.add(text)
                self.used_words.append(w)
                return text
        raise RuntimeError("could not build a new unique continuation")

    def positive(self, opening: Opening, avoid: str = "") -> str:
        def make() -> str:
            aspect = _lead_aspect(opening, self.rng)
            parts = [self.picker.pick(POS_LEAD[aspect], exclude={avoid})]
            n = self._n_sentences()
            others = [a for a in (*ASPECTS, "general") if a != aspect]
            self.rng.shuffle(others)
            for k in range(1, n):
                if k == n - 1 and self.rng.random() < 0.5:
                    parts.append(self.picker.pick(POS_CLOSE))
                else:
                    parts.append(self.picker.pick(POS_MORE[others[k]]))
            return " ".join(parts)

        return self._unique(make)

    def negative(self, opening: Opening, avoid: str = "") -> str:
        def make() -> str:
            aspect = _lead_aspect(opening, self.rng)
            parts = [self.picker.pick(NEG_LEAD[aspect], exclude={avoid})]
            n = self._n_sentences()
            for k in range(1, n):
                last = k == n - 1 and self.rng.random() < 0.5
                parts.append(self.picker.pick(NEG_CLOSE if last else NEG_MORE, exclude=set(parts)))
            return " ".join(parts)

        return self._unique(make)

    def flat(self, opening: Opening, avoid: str = "") -> str:
        def make() -> str:
            parts = [self.picker.pick(FLAT_LEAD, exclude={avoid})]
            n = self._n_sentences()
            for k in range(1, n):
                last = k == n - 1 and self.rng.random() < 0.5
                parts.append(self.picker.pick(FLAT_CLOSE if last else FLAT_MORE, exclude=set(parts)))
            return " ".join(parts)

        return self._unique(make)


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".") + "."


def build_all(seed: int = SEED) -> dict[str, list[dict]]:
    """All three data sets as lists of rows, keyed by file name. Deterministic for a given seed."""
    rng = random.Random(seed)
    openings = build_openings(rng)
    writer = _Writer(rng)

    review_prompts = [{"prompt": o.text} for o in openings[:N_REVIEW_PROMPTS]]

    # SFT: plain prompt/response rows plus a few chat rows; sft and prefs may share openings.
    sft_openings = rng.sample(openings, N_SFT_PLAIN + N_SFT_CHAT)
    sft: list[dict] = []
    for i, o in enumerate(sft_openings):
        response = writer.positive(o)
        if i < N_SFT_PLAIN:
            sft.append({"prompt": INSTRUCTION + o.text, "response": response})
        else:
            messages = [{"role": "user", "content": INSTRUCTION + o.text}, {"role": "assistant", "content": response}]
            if i % 2 == 0:  # half of the chat rows carry a system message
                messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            sft.append({"messages": messages})
    rng.shuffle(sft)

    # Preferences: chosen positive vs rejected negative (big gap) or flat (small gap); ties are same-sentiment pairs.
    pref_openings = rng.sample(openings, N_PREFS)
    kinds = ["tie"] * N_TIES + ["neg"] * round(0.6 * (N_PREFS - N_TIES))
    kinds += ["flat"] * (N_PREFS - len(kinds))
    rng.shuffle(kinds)
    tie_styles = ["pos"] * (N_TIES // 2) + ["neg"] * (N_TIES // 4)
    tie_styles += ["flat"] * (N_TIES - len(tie_styles))
    rng.shuffle(tie_styles)
    write = {"pos": writer.positive, "neg": writer.negative, "flat": writer.flat}
    prefs: list[dict] = []
    for o, kind in zip(pref_openings, kinds):
        row: dict = {"prompt": INSTRUCTION + o.text}
        if kind == "tie":
            style = write[tie_styles.pop()]
            a = style(o)
            row.update(chosen=a, rejected=style(o, avoid=_first_sentence(a)), tie=True)
            lo, hi = 0.5, 0.7
        else:
            row["chosen"] = writer.positive(o)
            row["rejected"] = write[kind](o)
            # strength is the margin: larger for a pan than for a shrug
            s_lo, s_hi = (1.2, 2.0) if kind == "neg" else (0.3, 1.0)
            if rng.random() < 0.9:
                row["strength"] = round(rng.uniform(s_lo, s_hi), 2)
            lo, hi = (0.8, 1.0) if kind == "neg" else (0.6, 0.9)
        if rng.random() < 0.9:
            row["rater"] = rng.choice(("r1", "r2", "r3"))
        if rng.random() < 0.9:
            row["confidence"] = round(rng.uniform(lo, hi), 2)
        prefs.append(row)

    return {"review_prompts.jsonl": review_prompts, "sft.jsonl": sft, "prefs.jsonl": prefs}


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_all(out_dir: Path = DATA_DIR, seed: int = SEED) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in build_all(seed).items():
        path = out_dir / name
        path.write_text(to_jsonl(rows), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output folder (default: the package data folder)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        stale = [n for n, rows in build_all(args.seed).items() if not (args.out / n).is_file()
                 or (args.out / n).read_text(encoding="utf-8") != to_jsonl(rows)]  # fmt: skip
        for name in stale:
            print(f"{args.out / name} differs from a fresh build", file=sys.stderr)
        return 1 if stale else 0
    for path in write_all(args.out, args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
