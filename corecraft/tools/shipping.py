"""calculateShipping: rate a shipment by carrier, service level, weight and destination zone."""

from __future__ import annotations

import sqlite3
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corecraft.tools.common import (
    CustomerId,
    OrderId,
    ProductId,
    Quantity,
    StateCode,
    fetch_one,
    policy_params,
    today,
    usd,
)
from corecraft.tools.customers import load_customer
from corecraft.tools.errors import ToolError
from corecraft.tools.orders import load_order
from corecraft.tools.registry import tool
from corecraft.world.calendar import add_business_days
from corecraft.world.connection import memoized

ServiceLevel = Literal["standard", "expedited", "overnight", "freight"]


class Item(BaseModel):
    """One product and how many."""

    model_config = ConfigDict(extra="forbid")
    product_id: ProductId
    quantity: Quantity = 1


@tool("calculateShipping")
def calculate_shipping(
    conn: sqlite3.Connection,
    *,
    order_id: Annotated[
        OrderId | None, Field(description="Rate this order's items to its ship-to state (instead of items).")
    ] = None,
    destination_state: Annotated[StateCode | None, Field(description="Where it goes (required without order_id).")] = None,
    items: Annotated[
        list[Item] | None, Field(min_length=1, max_length=50, description="Products to ship, with quantities.")
    ] = None,
    weight_grams: Annotated[
        int | None, Field(ge=1, le=500_000, description="Total shipping weight, if not given by items.")
    ] = None,
    service_level: ServiceLevel | None = None,
    carrier: Annotated[str | None, Field(min_length=1, max_length=16, description="e.g. 'UPS', 'FEDEX'.")] = None,
    origin_warehouse_id: Annotated[
        str | None, Field(min_length=1, max_length=16, description="Ship from this warehouse, e.g. 'WH-RNO'.")
    ] = None,
    customer_id: Annotated[
        CustomerId | None, Field(description="Apply this customer's loyalty free-shipping threshold.")
    ] = None,
) -> dict[str, Any]:
    """Shipping quotes for every matching carrier service, as the shipping policy computes them: zone from the
    shipping warehouse's region to the destination's (1 same, 2 neighbouring, 3 cross-country), billable weight
    per started kg, price = the zone's base rate + the per-kg rate, business days in transit and the estimated
    delivery from today. Services over their weight limit, and non-freight services for shipments over the
    oversize limit (30 kg), are listed as excluded. Free standard shipping follows the customer's tier
    threshold on the goods after discounts (the general threshold without a customer); Platinum also ships
    expedited free. Give `order_id`, or `destination_state` with `items` or `weight_grams`.
    """
    now = today(conn)
    lines: list[tuple[str, int]] = []
    order_goods: int | None = None
    if order_id is not None:
        if destination_state is not None or items is not None:
            raise ToolError("with order_id, leave destination_state and items out", argument="order_id")
        order = load_order(conn, order_id)
        if order["ship_state"] is None:
            raise ToolError(f"order {order_id} has no ship-to state on record; give destination_state instead",
                            argument="order_id")
        state = order["ship_state"]
        lines = [(r[0], r[1]) for r in conn.execute(
            "SELECT product_id, quantity FROM order_lines WHERE order_id = ?", (order_id,))]
        customer_id = customer_id or order["customer_id"]
        order_goods = order["subtotal_cents"] - order["discount_cents"]
    else:
        if destination_state is None:
            raise ToolError("required unless order_id is given", argument="destination_state")
        state = destination_state.upper()
        if items is None and weight_grams is None:
            raise ToolError("give items or weight_grams", argument="items")
        lines = [(i.product_id, i.quantity) for i in items or []]
    region = conn.execute("SELECT region FROM shipping_regions WHERE state_code = ?", (state,)).fetchone()
    if region is None:
        raise ToolError(f"{state!r} is not a US state code we ship to", argument="destination_state")
    weight = 0
    goods_cents = 0
    for pid, qty in lines:
        product = fetch_one(conn, "SELECT weight_grams, price_cents FROM products WHERE product_id = ?", (pid,),
                            argument="items", kind="product", value=pid)
        goods_cents += product["price_cents"] * qty
        if weight_grams is None:
            if product["weight_grams"] is None:
                raise ToolError(f"product {pid} has no shipping weight on record; give weight_grams",
                                argument="items")
            weight += product["weight_grams"] * qty
    if weight_grams is not None:
        weight = weight_grams
    if order_goods is not None:
        goods_cents = order_goods
    origin = _origin(conn, origin_warehouse_id, region["region"], [pid for pid, _ in lines])
    zone = conn.execute(
        "SELECT zone FROM shipping_zones WHERE origin_region = ? AND destination_region = ?",
        (origin["region"], region["region"]),
    ).fetchone()[0]
    policy = policy_params(conn, "shipping")
    oversize = policy.get("oversize_weight_grams")
    # Without a customer, the policy's general threshold (the Member tier's) applies.
    free_threshold = policy.get("free_shipping_threshold_cents")
    tier_id = None
    if customer_id is not None:
        customer = load_customer(conn, customer_id)
        tier_id = customer["loyalty_tier_id"]
        free_threshold = conn.execute(
            "SELECT free_shipping_threshold_cents FROM loyalty_tiers WHERE tier_id = ?", (tier_id,)
        ).fetchone()[0]
    free_levels = {"standard", "expedited"} if tier_id == "platinum" else {"standard"}
    where, params = ["sv.is_active = 1", "r.zone = ?"], [zone]
    if service_level is not None:
        where.append("sv.service_level = ?")
        params.append(service_level)
    if carrier is not None:
        if conn.execute("SELECT 1 FROM carriers WHERE carrier_id = upper(?)", (carrier,)).fetchone() is None:
            raise ToolError(f"no carrier {carrier!r}", argument="carrier")
        where.append("sv.carrier_id = upper(?)")
        params.append(carrier)
    # the rate card is reference data: memoized per (zone, level, carrier), a small key space (the carrier
    # exists, checked above; its case is folded as the SQL folds it)
    key = ("shipping_services", zone, service_level, carrier and carrier.upper())
    services = memoized(conn, key, lambda c: tuple(c.execute(
        "SELECT sv.*, r.base_cents, r.per_kg_cents FROM shipping_services sv "
        "JOIN shipping_rates r ON r.service_id = sv.service_id WHERE " + " AND ".join(where) +
        " ORDER BY sv.service_id",
        params,
    ).fetchall()))
    billable_kg = max(1, -(-weight // 1000))
    quotes, excluded = [], []
    for s in services:
        if weight > s["max_weight_grams"]:
            excluded.append({"service_id": s["service_id"],
                             "reason": f"{weight} g exceeds its {s['max_weight_grams']} g limit"})
            continue
        if oversize is not None and weight > oversize and s["service_level"] != "freight":
            excluded.append({"service_id": s["service_id"],
                             "reason": f"shipments over {oversize // 1000} kg ship by freight"})
            continue
        price = s["base_cents"] + s["per_kg_cents"] * billable_kg
        free = (free_threshold is not None and s["service_level"] in free_levels and goods_cents >= free_threshold)
        quotes.append({
            "service_id": s["service_id"], "carrier_id": s["carrier_id"], "service_name": s["name"],
            "service_level": s["service_level"], "price_usd": usd(price),
            "customer_pays_usd": 0.0 if free else usd(price), "loyalty_free_shipping": free,
            "transit_business_days": [s["min_transit_days"], s["max_transit_days"]],
            "estimated_delivery": add_business_days(now, s["max_transit_days"]).isoformat(),
        })
    quotes.sort(key=lambda q: (q["price_usd"], q["service_id"]))
    return {
        "origin_warehouse_id": origin["warehouse_id"], "origin_region": origin["region"],
        "destination_state": state, "destination_region": region["region"], "zone": zone,
        "weight_grams": weight, "billable_kg": billable_kg, "goods_value_usd": usd(goods_cents),
        "free_shipping_threshold_usd": usd(free_threshold), "quotes": quotes, "excluded": excluded,
        "today": now.isoformat(),
    }


def _origin(conn: sqlite3.Connection, warehouse_id: str | None, destination_region: str,
            product_ids: list[str]) -> sqlite3.Row:
    """The given warehouse, else the closest fulfilment centre stocking every item (overflow stock last), else
    the closest one."""
    if warehouse_id is not None:
        return fetch_one(conn, "SELECT warehouse_id, region FROM warehouses WHERE warehouse_id = ?",
                         (warehouse_id,), argument="origin_warehouse_id", kind="warehouse", value=warehouse_id)
    candidates = memoized(conn, ("origin_candidates", destination_region), lambda c: tuple(c.execute(
        "SELECT w.warehouse_id, w.region, z.zone FROM warehouses w JOIN shipping_zones z "
        "ON z.origin_region = w.region AND z.destination_region = ? "
        "ORDER BY z.zone, w.name LIKE '%Overflow%', w.warehouse_id",
        (destination_region,),
    ).fetchall()))
    for w in candidates:
        stocked = all(
            (conn.execute("SELECT quantity_on_hand - quantity_reserved FROM inventory WHERE warehouse_id = ? "
                          "AND product_id = ?", (w["warehouse_id"], pid)).fetchone() or (0,))[0] > 0
            for pid in product_ids
        )
        if stocked:
            return w
    return candidates[0]
