"""Cell classes, lineages, the differentiation tree and the AML blast/atypical scores.

Codes follow Matek et al.: the 21 bone-marrow classes of the 2021 set (Blood 138:1917),
the 15 classes of the 2019 AML set (Nat Mach Intell 1:538) and PBC's platelet code.

P(blast) and P(atypical) follow the AML paper:
``P(blast) = P(MYO) + P(MOB)`` and ``P(atypical)`` adds to it the classes not normally
seen in peripheral blood (myelocytes, metamyelocytes, promyelocytes incl. bilobed,
erythroblasts, atypical lymphocytes). The bone-marrow codes are mapped the same way:
``BLA`` is the blast class, and the precursors ``PMO MYB MMZ PEB EBO LYI`` and the
abnormal forms ``ABE FGC HAC PLM`` count as atypical for blood.
"""
from __future__ import annotations

from dataclasses import dataclass

LINEAGES = ("erythropoiesis", "granulopoiesis", "lymphopoiesis", "monopoiesis", "other")


@dataclass(frozen=True)
class CellClass:
    code: str
    name: str
    lineage: str
    parent: str | None  # node of the differentiation tree this class descends from
    leukocyte: bool = True


_CLASSES = [
    # tree nodes are the classes themselves plus a few inner nodes (see TREE_NODES)
    CellClass("ABE", "abnormal eosinophil", "granulopoiesis", "EOS"),
    CellClass("ART", "artefact", "other", None, leukocyte=False),
    CellClass("BAS", "basophil", "granulopoiesis", "granulocytes"),
    CellClass("BLA", "blast", "granulopoiesis", "myeloid"),
    CellClass("EBO", "erythroblast", "erythropoiesis", "PEB"),
    CellClass("EOS", "eosinophil", "granulopoiesis", "granulocytes"),
    CellClass("FGC", "faggot cell", "granulopoiesis", "PMO"),
    CellClass("HAC", "hairy cell", "lymphopoiesis", "LYT"),
    CellClass("KSC", "smudge cell", "other", None, leukocyte=False),
    CellClass("LYI", "immature lymphocyte", "lymphopoiesis", "lymphoid"),
    CellClass("LYT", "lymphocyte", "lymphopoiesis", "LYI"),
    CellClass("MMZ", "metamyelocyte", "granulopoiesis", "MYB"),
    CellClass("MON", "monocyte", "monopoiesis", "MOB"),
    CellClass("MYB", "myelocyte", "granulopoiesis", "PMO"),
    CellClass("NGB", "band neutrophil", "granulopoiesis", "MMZ"),
    CellClass("NGS", "segmented neutrophil", "granulopoiesis", "NGB"),
    CellClass("NIF", "not identifiable", "other", None, leukocyte=False),
    CellClass("OTH", "other cell", "other", None),
    CellClass("PEB", "proerythroblast", "erythropoiesis", "erythroid"),
    CellClass("PLM", "plasma cell", "lymphopoiesis", "lymphoid"),
    CellClass("PMO", "promyelocyte", "granulopoiesis", "BLA"),
    # Matek 2019 AML codes not in the bone-marrow set
    CellClass("LYA", "atypical lymphocyte", "lymphopoiesis", "LYT"),
    CellClass("MOB", "monoblast", "monopoiesis", "myeloid"),
    CellClass("MYO", "myeloblast", "granulopoiesis", "myeloid"),
    CellClass("PMB", "bilobed promyelocyte", "granulopoiesis", "MYO"),
    # PBC
    CellClass("PLT", "platelet", "other", None, leukocyte=False),
    # cells the model was not sure of (below the checkpoint's confidence threshold):
    # out of the differential until a reviewer gives them a class
    CellClass("UNK", "unclassified (to review)", "other", None, leukocyte=False),
]

CLASSES: dict[str, CellClass] = {c.code: c for c in _CLASSES}

BM_CODES = ("ABE", "ART", "BAS", "BLA", "EBO", "EOS", "FGC", "HAC", "KSC", "LYI", "LYT",
            "MMZ", "MON", "MYB", "NGB", "NGS", "NIF", "OTH", "PEB", "PLM", "PMO")
AML_CODES = ("BAS", "EBO", "EOS", "KSC", "LYA", "LYT", "MMZ", "MOB", "MON", "MYB", "MYO",
             "NGB", "NGS", "PMB", "PMO")
PBC_CODES = ("BAS", "EBO", "EOS", "LYT", "MMZ", "MON", "MYB", "NGB", "NGS", "PLT", "PMO")

#: inner nodes of the differentiation tree (child -> parent); leaves are the class codes
TREE_NODES = {"myeloid": "HSC", "lymphoid": "HSC", "erythroid": "HSC", "granulocytes": "MYB"}

BLAST_CODES = frozenset({"MYO", "MOB", "BLA"})
ATYPICAL_CODES = BLAST_CODES | frozenset(
    {"PMO", "PMB", "MYB", "MMZ", "EBO", "PEB", "LYA", "LYI", "ABE", "FGC", "HAC", "PLM"})
#: excluded from the differential's denominator by default
#: label of cells below the confidence threshold (their model class is in ``model_label``)
UNCLASSIFIED = "UNK"
NON_LEUKOCYTE_CODES = frozenset(c.code for c in _CLASSES if not c.leukocyte)
MYELOID_LINEAGES = ("granulopoiesis", "monopoiesis")
ERYTHROID_LINEAGES = ("erythropoiesis",)

#: neighbouring maturation stages forgiven by tolerant evaluation
DEFAULT_TOLERANT_PAIRS = (("NGB", "NGS"), ("MYB", "MMZ"))

#: fixed colour per class (RGB hex), chosen so neighbouring stages differ
PALETTE = {
    "ABE": "#e6ab02", "ART": "#7f7f7f", "BAS": "#9467bd", "BLA": "#d62728", "EBO": "#8c564b",
    "EOS": "#e7298a", "FGC": "#e377c2", "HAC": "#17becf", "KSC": "#c7c7c7", "LYI": "#aec7e8",
    "LYT": "#1f77b4", "MMZ": "#bcbd22", "MON": "#2ca02c", "MYB": "#dbdb8d", "NGB": "#98df8a",
    "NGS": "#ff7f0e", "NIF": "#a0a0a0", "OTH": "#f7b6d2", "PEB": "#c49c94", "PLM": "#9edae5",
    "PMO": "#c5b0d5", "LYA": "#393b79", "MOB": "#637939", "MYO": "#843c39", "PMB": "#7b4173",
    "PLT": "#e7ba52", "UNK": "#ffffff",
}
UNKNOWN_COLOUR = "#ffffff"
#: colour per lineage, for the lineage view of the histogram
LINEAGE_PALETTE = {"erythropoiesis": "#8c564b", "granulopoiesis": "#ff7f0e",
                   "lymphopoiesis": "#1f77b4", "monopoiesis": "#2ca02c", "other": "#7f7f7f"}


#: common English names of cell types (folder names of other data sets) -> the class codes
#: that count as correct; the first is the one a crop is trained as. A plain
#: "neutrophil" may be band or segmented, "blast" any blast, "immature granulocyte" any
#: of promyelocyte, myelocyte and metamyelocyte.
COMMON_NAMES = {
    "neutrophil": ("NGS", "NGB"), "segmented neutrophil": ("NGS",), "band neutrophil": ("NGB",),
    "band": ("NGB",), "eosinophil": ("EOS",), "basophil": ("BAS",), "lymphocyte": ("LYT",),
    "monocyte": ("MON",), "blast": ("BLA", "MYO", "MOB"), "myeloblast": ("MYO", "BLA"),
    "monoblast": ("MOB", "BLA"), "promyelocyte": ("PMO",), "myelocyte": ("MYB",),
    "metamyelocyte": ("MMZ",), "immature granulocyte": ("MYB", "PMO", "MMZ"), "ig": ("MYB", "PMO", "MMZ"),
    "erythroblast": ("EBO",), "normoblast": ("EBO",), "nucleated red cell": ("EBO",),
    "plasma cell": ("PLM",), "platelet": ("PLT",), "thrombocyte": ("PLT",),
}


def codes_for_name(name: str) -> tuple[str, ...] | None:
    """Class codes a folder or label name stands for: a class code itself, or a common
    English name of :data:`COMMON_NAMES` (any case, ``_``/``-`` for spaces, plural
    ``s``); None when unknown."""
    if name in CLASSES:
        return (name,)
    key = " ".join(name.lower().replace("_", " ").replace("-", " ").split())
    for k in (key, key[:-1] if key.endswith("s") else key):
        if k in COMMON_NAMES:
            return COMMON_NAMES[k]
    return None


def is_known(code: str) -> bool:
    """Return True if ``code`` is a class code of the taxonomy."""
    return code in CLASSES


def lineage_of(code: str) -> str:
    """Lineage of a class code; unknown codes belong to ``"other"``."""
    return CLASSES[code].lineage if code in CLASSES else "other"


def full_name(code: str) -> str:
    """Human-readable name of a class code (the code itself when unknown)."""
    return CLASSES[code].name if code in CLASSES else code


def colour_of(code: str) -> str:
    """Fixed display colour of a class code as a hex string."""
    return PALETTE.get(code, UNKNOWN_COLOUR)


def ancestors(code: str) -> list[str]:
    """Path from ``code`` up the differentiation tree (excluding ``code``)."""
    out, node = [], code
    while True:
        parent = CLASSES[node].parent if node in CLASSES else TREE_NODES.get(node)
        if parent is None or parent in out:
            return out
        out.append(parent)
        node = parent


@dataclass(frozen=True)
class ScoreMap:
    """Which of a model's classes feed P(blast) and P(atypical), and which are missing."""

    blast_idx: tuple[int, ...]
    atypical_idx: tuple[int, ...]
    missing_blast: tuple[str, ...]
    missing_atypical: tuple[str, ...]


def score_map(class_codes: list[str] | tuple[str, ...]) -> ScoreMap:
    """Index the classes of a checkpoint that make up P(blast) and P(atypical).

    Parameters
    ----------
    class_codes : sequence of str
        The model's classes, in output order.

    Returns
    -------
    ScoreMap
        Indices into the probability vector, and the codes of the score that the
        model lacks (reported in the summary, so a user knows P(blast) of a model
        without blast classes is structurally zero).
    """
    codes = list(class_codes)
    fam = "AML" if {"MYO", "MOB", "LYA", "PMB"} & set(codes) else "BM"
    want_blast = {"AML": ("MYO", "MOB"), "BM": ("BLA",)}[fam]
    want_atyp = sorted(c for c in ATYPICAL_CODES
                       if (fam == "AML" and c in AML_CODES) or (fam == "BM" and c in BM_CODES))
    return ScoreMap(
        blast_idx=tuple(codes.index(c) for c in want_blast if c in codes),
        atypical_idx=tuple(codes.index(c) for c in want_atyp if c in codes),
        missing_blast=tuple(c for c in want_blast if c not in codes),
        missing_atypical=tuple(c for c in want_atyp if c not in codes),
    )
