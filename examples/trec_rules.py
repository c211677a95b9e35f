"""Labeling functions for TREC-6 question types, written from the wording of questions alone.

Label ids follow the TREC files of ../shared/data/weak-supervision/trec: 0 description, 1 entity, 2 human,
3 abbreviation, 4 location, 5 numeric. Each rule votes one type or abstains; several may fire on one question.
"""
import re

from tuneforge.weak import ABSTAIN, labeling_function

DESC, ENTY, HUM, ABBR, LOC, NUM = "0", "1", "2", "3", "4", "5"


def _rule(pattern: str, label: str):
    """A rule that votes `label` when the lower-cased question matches `pattern`."""
    compiled = re.compile(pattern)
    return lambda text: label if compiled.search(text.lower()) else ABSTAIN


# Abbreviations: what letters stand for, or the short form of a name.
abbreviation = labeling_function("abbreviation")(_rule(
    r"\b(stand for|stands for|abbreviat\w*|acronym|full form|short for)\b", ABBR))

# Descriptions: manner, reason, definition.
how_to = labeling_function("how_to")(_rule(r"^how (do|does|did|can|could|would|should|is|are|was|were|to)\b", DESC))
why = labeling_function("why")(_rule(r"^why\b", DESC))
definition = labeling_function("definition")(_rule(
    r"^(what is|what are|what's|what was) (a |an |the )?[\w\-]+( [\w\-]+)? \?$|\b(mean|meaning|definition|"
    r"defined|origin of|difference between|describe)\b", DESC))
causes = labeling_function("causes")(_rule(r"^what (causes|caused|happens|happened|makes)\b", DESC))

# Entities: kinds of things.
kind_of = labeling_function("kind_of")(_rule(r"\b(what|which) (kind|type|sort|breed) of\b", ENTY))
thing_nouns = labeling_function("thing_nouns")(_rule(
    r"^(what|which|name) (a |an |the )?(color|colour|animal|sport|game|book|novel|movie|film|song|language|"
    r"instrument|disease|food|drink|plant|flower|bird|fish|dog|car|currency|religion|drug|product|award|prize|"
    r"element|metal|fruit|vegetable|dish|ship|war|planet|organ|body part|instrument|word|term|play)s?\b", ENTY))
name_a = labeling_function("name_a")(_rule(r"^name (a|an|the|one|two|three|some)\b", ENTY))

# Humans: who, and nouns for people and groups of them.
who = labeling_function("who")(_rule(r"^(who|whom|whose)\b|\bwho (is|was|were|are|invented|wrote|won|"
                                      r"discovered|played|said|painted|directed)\b", HUM))
person_nouns = labeling_function("person_nouns")(_rule(
    r"^(what|which) (famous )?(president|actor|actress|author|writer|poet|singer|composer|painter|artist|"
    r"scientist|inventor|king|queen|emperor|leader|person|man|woman|company|team|group|band|politician|player|"
    r"character|general|philosopher)s?\b", HUM))
name_of_person = labeling_function("name_of_person")(_rule(
    r"\bname of the (person|man|woman|author|actor|actress|president|company|team|band|character)\b", HUM))

# Locations: where, and nouns for places.
where = labeling_function("where")(_rule(r"^where\b|\bwhere (is|are|was|were|can|did|do|does)\b", LOC))
place_nouns = labeling_function("place_nouns")(_rule(
    r"^(what|which|in what|in which) (the )?(country|countries|city|cities|state|states|continent|river|"
    r"mountain|ocean|sea|lake|island|capital|county|province|region|place|street|park|desert|nation)\b", LOC))
located = labeling_function("located")(_rule(r"\b(located|situated|capital of|borders?)\b", LOC))

# Numbers: quantities, dates, measures.
how_quantity = labeling_function("how_quantity")(_rule(
    r"^how (many|much|far|long|old|tall|big|large|fast|hot|cold|deep|high|wide|heavy|often)\b", NUM))
when = labeling_function("when")(_rule(r"^when\b|\bwhen (did|was|is|were|does|do)\b", NUM))
number_nouns = labeling_function("number_nouns")(_rule(
    r"^(what|which|in what) (year|date|day|month|century|decade|percentage|percent|number|population|"
    r"temperature|speed|age|size|distance|height|weight|amount|price|time)\b", NUM))
cost = labeling_function("cost")(_rule(r"\b(cost|costs|price of|worth|how much money)\b", NUM))
