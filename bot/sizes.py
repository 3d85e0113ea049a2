"""Which VM sizes Yandex Compute allows per platform (shared/api-notes.md), checked before a resize. Pure.

A resize stops the VM first; a size the API then refuses would leave the runner stopped. So
/vm_upgrade refuses such a size up front, saying what is allowed. Unknown platforms (GPU ones,
new ones) are not checked here: the API has the last word.
"""

from __future__ import annotations

from dataclasses import dataclass

FRACTIONS = (5, 20, 50, 100)


@dataclass(frozen=True)
class Band:
    """Allowed core counts and GB of RAM per core, for one platform and core fraction."""

    cores: tuple[int, ...]
    per_core: tuple[float, float]  # (min, max) GB per core


def _even(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, 2))


# Core counts with their own RAM-per-core range (standard-v3 at 100 %).
_V3_FULL: dict[int, tuple[float, float]] = {**{c: (1, 16) for c in _even(2, 16)}, 20: (1, 16), 24: (1, 13),
                                             28: (1, 11), 32: (1, 10), 36: (1, 16), 40: (1, 16), 44: (1, 14),
                                             48: (1, 13), 52: (1, 12), 56: (1, 11), 60: (1, 10), 64: (1, 10),
                                             68: (1, 9), 72: (1, 8), 76: (1, 8), 80: (1, 8), 84: (1, 7),
                                             88: (1, 7), 92: (1, 6), 96: (1, 6)}

PLATFORMS: dict[str, dict[int, Band]] = {
    "standard-v1": {
        5: Band((2, 4), (0.5, 2)),
        20: Band((2, 4), (0.5, 4)),
        100: Band(_even(2, 16) + (20, 24, 28, 32), (1, 8)),
    },
    "standard-v2": {
        5: Band((2, 4), (0.25, 2)),
        20: Band((2, 4), (0.5, 4)),
        50: Band((2, 4), (0.5, 4)),
        100: Band(_even(2, 16) + tuple(range(20, 81, 4)), (1, 16)),
    },
    "standard-v3": {
        20: Band((2, 4), (0.5, 4)),
        50: Band((2, 4), (0.5, 4)),
        # Per-core limits differ by core count: see _V3_FULL.
        100: Band(tuple(_V3_FULL), (1, 16)),
    },
}


def _cores_text(cores: tuple[int, ...]) -> str:
    if len(cores) <= 6:
        return ", ".join(map(str, cores))
    return f"{cores[0]}, {cores[1]}, … {cores[-1]}"


def size_problem(platform: str, cores: int, memory_gb: float, fraction: int) -> str | None:
    """Why this size is not allowed on this platform, or None when it is (or the platform is unknown)."""
    if fraction not in FRACTIONS:
        return f"core fraction must be one of {', '.join(map(str, FRACTIONS))} %"
    bands = PLATFORMS.get(platform)
    if bands is None:
        return None
    band = bands.get(fraction)
    if band is None:
        allowed = ", ".join(f"{f} %" for f in sorted(bands))
        return f"{platform} does not offer a {fraction} % core fraction (it offers {allowed})"
    if cores not in band.cores:
        return f"{platform} at {fraction} % takes {_cores_text(band.cores)} cores, not {cores}"
    lo, hi = _V3_FULL[cores] if platform == "standard-v3" and fraction == 100 else band.per_core
    per_core = memory_gb / cores
    if not lo - 1e-9 <= per_core <= hi + 1e-9:
        return (f"{platform} at {fraction} % with {cores} cores takes {lo * cores:g}–{hi * cores:g} GB of memory "
                f"({lo:g}–{hi:g} GB per core), not {memory_gb:g} GB")
    return None
