"""Every weight format, by the name a variant's `dequant` gives it (`float` for a variant
that quantizes nothing). A new format is a file beside this one, its instance here,
its member in `workers.core.kinds.Dequant` and a `conf/variant/*.yaml` that names it."""

from __future__ import annotations

from workers.formats.base import Format
from workers.formats.direct import DIRECT
from workers.formats.factored import FACTORED
from workers.formats.floating import FLOATING
from workers.formats.integer import INTEGER
from workers.formats.per_token import PER_TOKEN

FORMATS: dict[str, Format] = {f.name: f for f in (FLOATING, DIRECT, FACTORED, INTEGER, PER_TOKEN)}
