"""Cost per 1k inferences, and the instance price table (``prices.toml``) it may take the price from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cvserve.errors import NotFoundError, UserInputError

PRICE_TABLE = Path(__file__).with_name("prices.toml")


@dataclass(frozen=True)
class Price:
    """An hourly price and where it came from."""

    per_hour: float
    instance_type: str | None
    source: str
    date: str | None = None
    hardware: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from cvserve._extras import require

        tomllib = require("tomli", extra="loadtest", purpose="to read the price table on Python 3.10")
    with open(path, "rb") as f:
        return tomllib.load(f)


def lookup(instance_type: str, table: Path = PRICE_TABLE) -> Price:
    """The on-demand price of ``instance_type`` from the price table (case-insensitive)."""
    data = _toml(table)
    meta = data.get("meta", {})
    for row in data.get("instance", []):
        if row["type"].lower() == instance_type.lower():
            return Price(
                per_hour=float(row["price_per_hour"]),
                instance_type=row["type"],
                source=f"{table.name}: {row.get('source', meta.get('source', ''))}, {row.get('region', '')}".rstrip(
                    ", "
                ),
                date=meta.get("date"),
                hardware=row.get("hardware"),
            )
    known = ", ".join(r["type"] for r in data.get("instance", []))
    raise NotFoundError(
        f"--instance-type {instance_type} is not in the price table {table} (known: {known}); "
        "give the price with --price-per-hour or add the instance to the table"
    )


def resolve_price(price_per_hour: float | None, instance_type: str | None) -> Price | None:
    """The price given directly (it wins), or looked up by instance type, or ``None``."""
    if price_per_hour is not None:
        if price_per_hour < 0:
            raise UserInputError(f"--price-per-hour must be positive, not {price_per_hour}")
        return Price(per_hour=price_per_hour, instance_type=instance_type, source="--price-per-hour")
    if instance_type:
        return lookup(instance_type)
    return None


def cost_per_1k(price_per_hour: float, replicas: int, inferences_per_s: float) -> float | None:
    """price per hour x replicas / (sustained inferences per second x 3600) x 1000, in dollars.

    ``None`` when nothing was sustained (no successful inference): the cost is unbounded.
    """
    if inferences_per_s <= 0:
        return None
    return price_per_hour * replicas / (inferences_per_s * 3600.0) * 1000.0
