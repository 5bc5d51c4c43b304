"""Request models of the example app (pydantic): a bad value is a 422 naming the field.

Numbers are JSON numbers or numeric strings, finite (no NaN, no Infinity, nothing
too large for a float), never booleans; text fields take text or a number (as its
text); ``total`` is an exact decimal.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


#: a finite float (JSON number or numeric string; booleans, NaN, Infinity refused)
FiniteFloat = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_no_bool)]
#: an exact, finite decimal
FiniteDecimal = Annotated[Decimal, Field(allow_inf_nan=False), BeforeValidator(_no_bool)]
#: text; a JSON number is taken as its text
Text = Annotated[str, Field(max_length=10_000)]


class _In(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True, extra="ignore")


class NoteIn(_In):
    title: Text = ""
    tag: Text | None = None
    score: FiniteFloat = 0.0


class OrderIn(_In):
    order_id: Text | None = None
    customer: Text | None = None
    total: FiniteDecimal = Decimal(0)


class StatusIn(_In):
    status: Text = ""
