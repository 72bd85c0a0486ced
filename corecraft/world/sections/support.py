"""Support tickets with threads, returns and refunds, warranty claims, and the internal ops chat."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from corecraft.world.generator import (
    Generator,
    Row,
    ts,
)
from corecraft.world.warranty import applicable_warranty


def support_tickets(g: Generator) -> None:
    """Tickets across channels and priorities with SLA deadlines and message threads."""
    rng = g.rng("tickets")
    templates = g.data.tickets["category"]
    names = sorted(templates)
    weights = [templates[c]["weight"] for c in names]
    orders_by_customer: dict[str, list[Row]] = defaultdict(list)
    for o in g.orders_:
        orders_by_customer[o["customer_id"]].append(o)
    with_orders = [c for c in g.customers_ if orders_by_customer[c["customer_id"]]]
    agents = g.staff_by_team["support_t1"] + g.staff_by_team["support_t2"]
    message_id = 1
    g.tickets_: list[Row] = []
    for _ in range(g.count("support_tickets")):
        category = rng.choices(names, weights)[0]
        tpl = templates[category]
        customer = rng.choice(with_orders if tpl.get("needs_order", True) else g.customers_)
        order = (
            rng.choice(orders_by_customer[customer["customer_id"]])
            if orders_by_customer[customer["customer_id"]]
            else None
        )
        line = rng.choice(g.lines_by_order[order["order_id"]]) if order else None
        product = g.products[line["product_id"]] if line else rng.choice(list(g.products.values()))
        placed = (
            dt.datetime.fromisoformat(order["placed_at"].replace("Z", ""))
            if order
            else g.now - dt.timedelta(days=200)
        )
        created = placed + dt.timedelta(
            hours=rng.uniform(1, max(2.0, min(90 * 24, (g.now - placed).total_seconds() / 3600)))
        )
        created = min(created, g.now - dt.timedelta(minutes=rng.randint(5, 600))).replace(microsecond=0)
        priority = rng.choices(
            ["low", "normal", "high", "urgent"], tpl.get("priority_weights", [15, 55, 22, 8])
        )[0]
        tier = g.tiers[customer["loyalty_tier_id"]]
        sla_id = f"SLA-SUP-{priority.upper()}"
        if tier["priority_support"] and priority in ("normal", "high"):
            sla_id = f"SLA-SUP-PRIORITY-{priority.upper()}"
        sla = g.slas[sla_id]
        channel = rng.choices(["email", "chat", "phone", "web_form", "social"], [40, 28, 15, 14, 3])[0]
        fmt = {
            "order_id": order["order_id"] if order else "",
            "product": product["name"],
            "first_name": customer["first_name"],
            "tracking": (
                g.shipments_by_order.get(order["order_id"]) or [{"tracking_number": "(not yet assigned)"}]
            )[0]["tracking_number"]
            if order
            else "",
        }
        subject = rng.choice(tpl["subjects"]).format(**fmt)
        opening = rng.choice(tpl["openings"]).format(**fmt)
        age_h = (g.now - created).total_seconds() / 3600
        if age_h < 2:
            status = "new"
        elif age_h < 72:
            status = rng.choices(["open", "pending_customer", "escalated", "resolved"], [45, 25, 10, 20])[0]
        else:
            status = rng.choices(
                ["resolved", "closed", "open", "escalated", "pending_customer"], [35, 45, 8, 5, 7]
            )[0]
        assigned = (
            None
            if status == "new"
            else rng.choice(g.staff_by_team["escalations"] if status == "escalated" else agents)
        )
        if assigned and rng.random() < 0.03 and g.former_staff:
            assigned = g.former_staff[0]  # still assigned to someone who left (noise)
        first_due = created + dt.timedelta(minutes=sla["first_response_minutes"])
        resolution_due = created + dt.timedelta(hours=sla["resolution_hours"])
        ticket_id = g.ids.take("TKT", 50001)
        messages: list[tuple[dt.datetime, str, str | None, int, str]] = [
            (created, "customer", None, 0, opening)
        ]
        first_response = None
        if status != "new":
            # Most first responses meet the SLA; some breach it.
            limit = sla["first_response_minutes"] * (
                rng.uniform(0.1, 0.9) if rng.random() < 0.85 else rng.uniform(1.1, 3.0)
            )
            first_response = min(
                created + dt.timedelta(minutes=limit), g.now - dt.timedelta(minutes=1)
            ).replace(microsecond=0)
            messages.append(
                (first_response, "agent", assigned, 0, rng.choice(tpl["agent_replies"]).format(**fmt))
            )
            t = first_response
            for _ in range(rng.choice([0, 0, 1, 1, 2])):
                t = t + dt.timedelta(hours=rng.uniform(1, 30))
                if t >= g.now:
                    break
                messages.append((t, "customer", None, 0, rng.choice(tpl["followups"]).format(**fmt)))
                t2 = t + dt.timedelta(hours=rng.uniform(0.3, 20))
                if t2 >= g.now:
                    break
                messages.append((t2, "agent", assigned, 0, rng.choice(tpl["agent_replies"]).format(**fmt)))
                t = t2
            if rng.random() < 0.3:
                note_at = min(t + dt.timedelta(minutes=rng.randint(1, 120)), g.now - dt.timedelta(seconds=30))
                messages.append(
                    (
                        note_at,
                        "agent",
                        assigned,
                        1,
                        rng.choice(g.data.tickets["internal_notes"]).format(**fmt),
                    )
                )
        resolved_at = None
        if status in ("resolved", "closed"):
            resolved_at = min(
                max(m[0] for m in messages) + dt.timedelta(hours=rng.uniform(0.2, 12)),
                g.now - dt.timedelta(seconds=10),
            ).replace(microsecond=0)
            messages.append((resolved_at, "system", None, 0, f"Ticket marked {status} by {assigned}."))
        if status == "escalated":
            esc_at = min(
                max(m[0] for m in messages) + dt.timedelta(minutes=10),
                g.now - dt.timedelta(seconds=20),
            )
            messages.append(
                (
                    esc_at,
                    "system",
                    None,
                    0,
                    f"Ticket escalated to the escalations team ({sla['breach_action']}).",
                )
            )
        row = {
            "ticket_id": ticket_id,
            "customer_id": customer["customer_id"],
            "order_id": order["order_id"] if order and tpl.get("needs_order", True) else None,
            "product_id": product["product_id"] if tpl.get("about_product") else None,
            "subject": subject,
            "description": opening,
            "category": category,
            "channel": channel,
            "priority": priority,
            "status": status,
            "assigned_to": assigned,
            "sla_id": sla_id,
            "created_at": ts(created),
            "updated_at": ts(max(m[0] for m in messages)),
            "first_response_due_at": ts(first_due),
            "first_response_at": ts(first_response) if first_response else None,
            "resolution_due_at": ts(resolution_due),
            "resolved_at": ts(resolved_at) if resolved_at else None,
            "satisfaction_score": rng.choices([1, 2, 3, 4, 5], [6, 6, 14, 34, 40])[0]
            if status == "closed" and rng.random() < 0.6
            else None,
            "tags": ",".join(
                sorted(
                    {category, channel}
                    | ({"sla_breached"} if first_response and first_response > first_due else set())
                )
            ),
        }
        g.tickets_.append(row)
        for when, author_type, author, internal, body in sorted(messages, key=lambda m: m[0]):
            g.t["ticket_messages"].append(
                {
                    "message_id": message_id,
                    "ticket_id": ticket_id,
                    "author_type": author_type,
                    "author_employee_id": author if author_type == "agent" else None,
                    "sent_at": ts(when),
                    "channel": "internal" if internal else channel,
                    "is_internal_note": internal,
                    "body": body,
                }
            )
            message_id += 1
    g.renumber(
        g.tickets_,
        "ticket_id",
        "created_at",
        lambda i: f"TKT-{50001 + i}",
        ((g.t["ticket_messages"], "ticket_id"),),
    )
    g.renumber(g.t["ticket_messages"], "message_id", "sent_at", lambda i: i + 1)
    g.t["support_tickets"] = g.tickets_


def returns_and_refunds(g: Generator) -> None:
    """RMAs per the returns and restocking policies; refunds for returns, late shipping, cancellations."""
    rng = g.rng("returns")
    window = int(g.param("returns", "window_days"))
    fee_pct = int(g.param("restocking", "fee_percent"))
    delivered = [
        o for o in g.orders_ if o["status"] == "delivered" and g.shipments_by_order.get(o["order_id"])
    ]
    tickets_by_order: dict[str, list[Row]] = defaultdict(list)
    for tk in g.tickets_:
        if tk["order_id"]:
            tickets_by_order[tk["order_id"]].append(tk)
    customers = {c["customer_id"]: c for c in g.customers_}
    refund_n = 0
    for order in rng.sample(delivered, min(len(delivered), g.count("returns"))):
        shipment = g.shipments_by_order[order["order_id"]][0]
        delivered_at = shipment["delivered_at"] or shipment["updated_at"]
        base = dt.datetime.fromisoformat(delivered_at.replace("Z", ""))
        customer = customers[order["customer_id"]]
        tier = g.tiers[customer["loyalty_tier_id"]]
        cust_window = max(window, tier["return_window_days"])
        late_request = rng.random() < 0.15
        offset_days = (
            rng.uniform(cust_window + 1, cust_window + 25)
            if late_request
            else rng.uniform(0.5, cust_window - 0.5)
        )
        requested = base + dt.timedelta(days=offset_days)
        if requested >= g.now:
            continue
        lines = [
            ln for ln in g.lines_by_order[order["order_id"]] if g.products[ln["product_id"]]["is_returnable"]
        ]
        if not lines:
            continue
        chosen = rng.sample(lines, rng.randint(1, len(lines)))
        reason = rng.choices(
            [
                "defective",
                "wrong_item",
                "not_needed",
                "damaged_in_transit",
                "incompatible",
                "changed_mind",
                "arrived_late",
            ],
            [25, 8, 18, 10, 20, 15, 4],
        )[0]
        condition = {"defective": "defective", "damaged_in_transit": "damaged"}.get(
            reason, rng.choice(["unopened", "opened", "opened"])
        )
        if late_request:
            status = "rejected"
        else:
            age = (g.now - requested).days
            status = (
                rng.choice(["requested", "approved"])
                if age < 2
                else rng.choice(["label_sent", "received"])
                if age < 7
                else rng.choice(["refunded", "refunded", "refunded", "exchanged", "cancelled"])
            )
        if status == "exchanged":
            ret_type = "exchange"
        else:
            ret_type = rng.choices(["refund", "store_credit", "exchange"], [80, 8, 12])[0]
            if status == "refunded" and ret_type == "exchange":
                ret_type = "refund"
        goods = sum(ln["line_total_cents"] for ln in chosen)
        fee = 0
        if (
            condition == "opened"
            and reason in ("not_needed", "changed_mind", "incompatible")
            and not tier["restocking_fee_waived"]
        ):
            fee = min(goods * fee_pct // 100, int(g.param("restocking", "max_fee_cents")))
        return_id = g.ids.take("RMA", 40001)
        ticket = tickets_by_order[order["order_id"]][0] if tickets_by_order[order["order_id"]] else None
        received = (
            requested + dt.timedelta(days=rng.uniform(3, 8))
            if status in ("received", "refunded", "exchanged")
            else None
        )
        refund_amount = goods - fee if status == "refunded" else None
        g.t["returns"].append(
            {
                "return_id": return_id,
                "order_id": order["order_id"],
                "customer_id": order["customer_id"],
                "ticket_id": ticket["ticket_id"] if ticket else None,
                "return_type": ret_type,
                "reason": reason,
                "status": status,
                "requested_at": ts(requested),
                "received_at": ts(min(received, g.now)) if received else None,
                "restocking_fee_cents": fee,
                "refund_amount_cents": refund_amount,
                "exchange_order_id": None,
                "notes": f"Requested {offset_days:.0f} days after delivery; outside the {cust_window}-day window."
                if late_request
                else None,
            }
        )
        for ln in chosen:
            qty = ln["quantity"] if rng.random() < 0.8 else 1
            g.t["return_lines"].append(
                {
                    "return_line_id": len(g.t["return_lines"]) + 1,
                    "return_id": return_id,
                    "order_line_id": ln["order_line_id"],
                    "quantity": qty,
                    "item_condition": condition,
                }
            )
            if status in ("refunded", "exchanged", "received"):
                ln["quantity_returned"] = qty
        if status in ("refunded", "exchanged", "received"):
            all_back = all(
                ln["quantity_returned"] >= ln["quantity"] for ln in g.lines_by_order[order["order_id"]]
            )
            order["status"] = "returned" if all_back else "partially_returned"
            order["updated_at"] = max(order["updated_at"], ts(min(received or requested, g.now)))
        if status == "refunded" and refund_amount and refund_amount > 0:
            refund_n += 1
            issued = min((received or requested) + dt.timedelta(days=rng.uniform(0.5, 4)), g.now)
            g.t["refunds"].append(
                {
                    "refund_id": g.ids.take("RF", 60001),
                    "order_id": order["order_id"],
                    "return_id": return_id,
                    "ticket_id": ticket["ticket_id"] if ticket else None,
                    "amount_cents": refund_amount,
                    "method": "store_credit" if ret_type == "store_credit" else "original_payment",
                    "reason": "return",
                    "status": "issued",
                    "created_at": ts(received or requested),
                    "issued_at": ts(issued),
                }
            )
            order["payment_status"] = "refunded" if order["status"] == "returned" else "partially_refunded"
    # Shipping refunds for late deliveries and goodwill credits (not tied to returns).
    for order in g.orders_:
        shipments = g.shipments_by_order.get(order["order_id"])
        if not shipments or not shipments[0]["delivered_at"] or order["shipping_cents"] == 0:
            continue
        s = shipments[0]
        if s["delivered_at"][:10] > s["promised_delivery_date"] and rng.random() < 0.5:
            created = dt.datetime.fromisoformat(s["delivered_at"].replace("Z", "")) + dt.timedelta(
                days=rng.uniform(0.5, 5)
            )
            if created >= g.now:
                continue
            g.t["refunds"].append(
                {
                    "refund_id": g.ids.take("RF", 60001),
                    "order_id": order["order_id"],
                    "return_id": None,
                    "ticket_id": None,
                    "amount_cents": order["shipping_cents"],
                    "method": "original_payment",
                    "reason": "shipping_delay",
                    "status": rng.choice(["issued", "issued", "issued", "pending"]),
                    "created_at": ts(created),
                    "issued_at": None,
                }
            )
            r = g.t["refunds"][-1]
            if r["status"] == "issued":
                r["issued_at"] = ts(min(created + dt.timedelta(days=1), g.now))
            if order["payment_status"] == "captured":
                order["payment_status"] = "partially_refunded"
    for order in g.orders_:
        if order["status"] == "cancelled" and order["payment_method"] != "gift_card" and rng.random() < 0.3:
            # A cancelled order whose card was captured before cancellation, so money went back.
            placed = dt.datetime.fromisoformat(order["placed_at"].replace("Z", ""))
            order["payment_status"] = "refunded"
            g.t["refunds"].append(
                {
                    "refund_id": g.ids.take("RF", 60001),
                    "order_id": order["order_id"],
                    "return_id": None,
                    "ticket_id": None,
                    "amount_cents": order["total_cents"],
                    "method": "original_payment",
                    "reason": "cancellation",
                    "status": "issued",
                    "created_at": ts(min(placed + dt.timedelta(hours=6), g.now)),
                    "issued_at": ts(min(placed + dt.timedelta(days=2), g.now)),
                }
            )
    g.renumber(
        g.t["returns"],
        "return_id",
        "requested_at",
        lambda i: f"RMA-{40001 + i}",
        ((g.t["return_lines"], "return_id"), (g.t["refunds"], "return_id")),
    )
    g.renumber(g.t["return_lines"], "return_line_id", "return_id", lambda i: i + 1)
    g.renumber(g.t["refunds"], "refund_id", "created_at", lambda i: f"RF-{60001 + i}")


def warranty_claims(g: Generator) -> None:
    """Claims against delivered order lines, citing the policy that covered the purchase."""
    rng = g.rng("warranty_claims")
    candidates = []
    for order in g.orders_:
        if order["status"] not in ("delivered", "partially_returned") or not g.shipments_by_order.get(
            order["order_id"]
        ):
            continue
        for ln in g.lines_by_order[order["order_id"]]:
            if g.products[ln["product_id"]]["category"] in (
                "gpu",
                "cpu",
                "psu",
                "memory",
                "storage",
                "motherboard",
                "monitor",
                "cooler",
                "peripheral",
            ):
                candidates.append((order, ln))
    tickets_by_order: dict[str, list[Row]] = defaultdict(list)
    for tk in g.tickets_:
        if tk["order_id"] and tk["category"] == "warranty":
            tickets_by_order[tk["order_id"]].append(tk)
    issues = g.data.tickets["warranty_issues"]
    for order, ln in rng.sample(candidates, min(len(candidates), g.count("warranty_claims"))):
        product = g.products[ln["product_id"]]
        placed = dt.datetime.fromisoformat(order["placed_at"].replace("Z", ""))
        filed = placed + dt.timedelta(days=rng.uniform(20, max(21, (g.now - placed).days)))
        if filed >= g.now:
            continue
        policy = applicable_warranty(
            g.t["warranty_policies"], product["brand_id"], product["category"], placed.date()
        )
        age = (g.now - filed).days
        status = (
            rng.choice(["submitted", "under_review"])
            if age < 5
            else rng.choices(
                ["approved", "denied", "replacement_shipped", "repaired", "refunded"],
                [15, 18, 40, 12, 15],
            )[0]
        )
        decided = (
            filed + dt.timedelta(days=rng.uniform(1, 5))
            if status not in ("submitted", "under_review")
            else None
        )
        resolution = {
            "approved": "Approved; awaiting defective unit.",
            "denied": rng.choice(
                [
                    "Denied: physical damage (bent socket pins) is not covered.",
                    "Denied: serial number does not match our records.",
                    "Denied: outside the coverage period.",
                ]
            ),
            "replacement_shipped": "Replacement unit shipped.",
            "repaired": "Repaired by the manufacturer and returned.",
            "refunded": "Replacement unavailable (discontinued); refunded the purchase price.",
        }.get(status)
        ticket = tickets_by_order[order["order_id"]][0] if tickets_by_order[order["order_id"]] else None
        g.t["warranty_claims"].append(
            {
                "claim_id": g.ids.take("WC", 70001),
                "customer_id": order["customer_id"],
                "order_id": order["order_id"],
                "order_line_id": ln["order_line_id"] if rng.random() > 0.05 else None,
                "product_id": product["product_id"],
                "warranty_policy_id": policy["warranty_policy_id"] if policy else None,
                "ticket_id": ticket["ticket_id"] if ticket else None,
                "serial_number": ln["serial_number"],
                "issue_description": rng.choice(issues.get(product["category"], issues["default"])),
                "status": status,
                "filed_at": ts(filed),
                "decided_at": ts(min(decided, g.now)) if decided else None,
                "resolution": resolution,
            }
        )

    g.renumber(g.t["warranty_claims"], "claim_id", "filed_at", lambda i: f"WC-{70001 + i}")


def ops_chat(g: Generator) -> None:
    """Internal chat across channels, with threads; mostly noise, sometimes the only context."""
    rng = g.rng("ops_chat")
    chat = g.data.ops_chat
    channels = sorted(chat["channel"])
    weights = [chat["channel"][c]["weight"] for c in channels]
    staff = [e for e in g.t["employees"]]
    team_staff: dict[str, list[str]] = defaultdict(list)
    for e in staff:
        team_staff[e["team"]].append(e["employee_id"])
    recent_orders = [o for o in g.orders_ if o["placed_at"] >= ts(g.now - dt.timedelta(days=60))] or g.orders_
    products = list(g.products.values())
    msg_id = 1
    posts: list[Row] = []
    for _ in range(g.count("ops_chat_messages")):
        channel = rng.choices(channels, weights)[0]
        spec = chat["channel"][channel]
        teams = spec["teams"]
        author = rng.choice([e for t_ in teams for e in team_staff[t_]])
        order = rng.choice(recent_orders)
        product = rng.choice(products)
        shipment = (g.shipments_by_order.get(order["order_id"]) or [None])[0]
        fmt = {
            "order_id": order["order_id"],
            "product": product["name"],
            "product_id": product["product_id"],
            "carrier": shipment["carrier_id"] if shipment else rng.choice(["UPS", "FedEx", "USPS"]),
            "tracking": shipment["tracking_number"] if shipment else "n/a",
            "n": rng.randint(2, 40),
            "warehouse": rng.choice(["RNO", "DFW", "CMH", "ATL"]),
            "pct": rng.choice([5, 8, 10, 12, 15]),
            "code": rng.choice(g.promos)["code"],
            "hub": rng.choice(["Louisville", "Memphis", "Indianapolis", "Ontario", "Dallas"]),
        }
        template = rng.choice(spec["messages"])
        body = template.format(**fmt)
        posted = g.past(rng, g.history_days, 0.01, recent_bias=2.2)
        row = {
            "message_id": msg_id,
            "channel": channel,
            "author_employee_id": author,
            "posted_at": ts(posted),
            "thread_parent_id": None,
            "related_order_id": order["order_id"] if "{order_id}" in template else None,
            "related_product_id": product["product_id"] if "{product" in template else None,
            "body": body,
        }
        posts.append(row)
        msg_id += 1
        for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):
            replier = rng.choice([e for t_ in teams for e in team_staff[t_]])
            posted = posted + dt.timedelta(minutes=rng.randint(1, 240))
            if posted >= g.now:
                break
            posts.append(
                {
                    "message_id": msg_id,
                    "channel": channel,
                    "author_employee_id": replier,
                    "posted_at": ts(posted),
                    "thread_parent_id": row["message_id"],
                    "related_order_id": None,
                    "related_product_id": None,
                    "body": rng.choice(chat["replies"]).format(**fmt),
                }
            )
            msg_id += 1
    g.renumber(posts, "message_id", "posted_at", lambda i: i + 1, ((posts, "thread_parent_id"),))
    g.t["ops_chat_messages"] = posts
