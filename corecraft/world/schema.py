"""The CoreCraft database schema: one SQLite file, the operational store of a PC-components retailer.

Data model at a glance (-> is a foreign key)
--------------------------------------------
Catalog
  brands                 manufacturers (brand_id slug, e.g. 'asus')
  products               sellable items: product_id like 'GPU-0042', category, brand -> brands, price_cents, status
  product_specs          one row per product, typed spec columns (socket, memory_type, form_factor, tdp_watts,
                         gpu_length_mm, max_gpu_length_mm, cooler_height_mm, wattage, pcie power connectors...);
                         columns that do not apply to a category are NULL
  compatibility_rules    declarative build checks (left category.attribute <op> right category.attribute)
  warehouses, inventory  stock per (warehouse, product): on hand, reserved, reorder point, restock ETA
Customers and loyalty
  loyalty_tiers          'member' < 'silver' < 'gold' < 'platinum': discount, free shipping, return window, ...
  customers              customer_id like 'CUST-10001' -> loyalty_tiers; includes deliberate near-duplicates
  builds, build_components   saved PC configurations (customer -> builds -> products)
Orders and fulfilment
  promotions             codes with eligibility rules (min order, category, brand, min tier) and expiry
  orders, order_lines    order_id like 'ORD-200001' -> customers, -> promotions, -> shipping_services
  order_status_history   status changes as logged by each system (oms, warehouse, carrier_sync, agent)
  carriers, shipping_services, shipping_rates, shipping_regions, shipping_zones   rating data for calculateShipping
  shipments, shipment_events   tracking (carrier scans); shipments carry promised_delivery_date (the SLA deadline)
  returns, return_lines, refunds   RMAs ('RMA-...') and money back ('RF-...')
Support
  employees              support agents, warehouse and logistics staff
  slas                   support SLAs (by priority) and delivery SLAs (by service level)
  support_tickets, ticket_messages   tickets across channels and priorities, with threads
  warranty_policies, warranty_claims terms by brand and/or category; claims against order lines
Knowledge
  company_policies, policy_parameters   policy documents as text (what agents must follow) + their numbers
  kb_articles            troubleshooting and compatibility guides; some are stale (superseded by newer policy)
  ops_chat_messages      internal Slack-like chatter (noisy context)
Text search (derived)
  customers_text         trigram FTS5 index of customers' full names, emails and company names
Bookkeeping
  meta                   key/value: schema_name, schema_version, seed, scale, today (the world's current date)
  audit_log              written by tools (empty in a fresh world)

Conventions
  * IDs agents see are TEXT codes ('ORD-200001'); high-volume child rows use INTEGER ids.
  * Money is INTEGER cents (``*_cents``), USD.
  * Dates are 'YYYY-MM-DD'; timestamps are ISO-8601 UTC 'YYYY-MM-DDTHH:MM:SSZ' (so they sort as text).
  * Booleans are INTEGER 0/1.
  * Lists inside one cell (e.g. a cooler's supported sockets) are comma-separated, no spaces: 'AM5,AM4,LGA1700'.
  * The world's "now" is meta['today'] (see ``World.today``); nothing reads the wall clock.
  * Deliberate noise: shipments.shipped_at (warehouse system) can disagree with the carrier's first scan and
    with order_status_history; some customers lack phone/address; near-duplicate customers exist; some
    kb_articles are stale (status 'published', contradicting a newer company policy, superseded_by maybe set).
"""

from __future__ import annotations

import functools
import sqlite3

SCHEMA_NAME = "corecraft"
SCHEMA_VERSION = 2  # 2: the trigram text-search index customers_text

DDL = """
-- Bookkeeping ------------------------------------------------------------------------------------------
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,        -- schema_name, schema_version, seed, scale, today, generator
    value TEXT NOT NULL
);

-- Catalog ---------------------------------------------------------------------------------------------
CREATE TABLE brands (
    brand_id      TEXT PRIMARY KEY,  -- slug, e.g. 'asus'
    name          TEXT NOT NULL UNIQUE,
    country       TEXT,
    support_url   TEXT,
    support_phone TEXT
);

CREATE TABLE products (
    product_id    TEXT PRIMARY KEY,  -- '<CAT>-<nnnn>', e.g. 'CPU-0007'
    name          TEXT NOT NULL,
    brand_id      TEXT NOT NULL REFERENCES brands(brand_id),
    category      TEXT NOT NULL CHECK (category IN ('cpu','gpu','motherboard','memory','storage','psu',
                                                     'case','cooler','monitor','peripheral')),
    subcategory   TEXT,              -- e.g. 'nvme_ssd', 'aio_liquid', 'keyboard'
    model_number  TEXT,
    upc           TEXT,
    price_cents   INTEGER NOT NULL CHECK (price_cents >= 0),   -- our current selling price
    msrp_cents    INTEGER,                                     -- manufacturer's suggested price
    status        TEXT NOT NULL CHECK (status IN ('active','discontinued','preorder')),
    is_returnable INTEGER NOT NULL DEFAULT 1 CHECK (is_returnable IN (0,1)),  -- 0 = final sale
    release_date  TEXT,
    weight_grams  INTEGER,           -- shipping weight, drives calculateShipping
    description   TEXT
);
CREATE INDEX idx_products_category ON products(category);
CREATE INDEX idx_products_brand ON products(brand_id);
CREATE INDEX idx_products_name ON products(name);

-- One row per product; a column is NULL where it does not apply to the product's category.
CREATE TABLE product_specs (
    product_id               TEXT PRIMARY KEY REFERENCES products(product_id),
    socket                   TEXT,    -- cpu, motherboard: 'AM5','AM4','LGA1700','LGA1851'
    supported_sockets        TEXT,    -- cooler: comma list
    cpu_series               TEXT,    -- cpu: 'Ryzen 9000', 'Core Ultra 200S'...
    supported_cpu_series     TEXT,    -- motherboard: comma list supported by the shipped BIOS
    chipset                  TEXT,    -- motherboard: 'B650','X870E','Z790'...
    cores                    INTEGER, -- cpu
    threads                  INTEGER, -- cpu
    base_clock_ghz           REAL,    -- cpu, gpu
    boost_clock_ghz          REAL,    -- cpu, gpu
    integrated_graphics      INTEGER, -- cpu: 0/1
    tdp_watts                INTEGER, -- cpu TDP / gpu total board power
    memory_type              TEXT,    -- motherboard, memory: 'DDR4','DDR5'
    memory_speed_mhz         INTEGER, -- memory: rated speed (MT/s)
    max_memory_speed_mhz     INTEGER, -- motherboard: highest supported memory speed
    memory_slots             INTEGER, -- motherboard
    max_memory_gb            INTEGER, -- motherboard
    memory_modules           INTEGER, -- memory: sticks in the kit
    capacity_gb              INTEGER, -- memory (kit total), storage
    cas_latency              INTEGER, -- memory
    form_factor              TEXT,    -- motherboard 'ATX'|'Micro-ATX'|'Mini-ITX'|'E-ATX'; case 'Full Tower'|
                                      -- 'Mid Tower'|'Mini Tower'|'Small Form Factor'; psu 'ATX'|'SFX';
                                      -- storage 'M.2 2280'|'2.5"'|'3.5"'
    supported_form_factors   TEXT,    -- case: motherboard form factors that fit, comma list
    supported_psu_form_factors TEXT,  -- case: comma list
    max_gpu_length_mm        INTEGER, -- case: GPU clearance
    max_cooler_height_mm     INTEGER, -- case: air-cooler clearance
    max_radiator_mm          INTEGER, -- case: largest radiator (0 = none)
    gpu_chip                 TEXT,    -- gpu: 'GeForce RTX 4070 SUPER'...
    vram_gb                  INTEGER, -- gpu
    gpu_length_mm            INTEGER, -- gpu
    slot_width               REAL,    -- gpu: expansion slots occupied
    recommended_psu_watts    INTEGER, -- gpu: vendor's recommended PSU
    pcie_power_8pin          INTEGER, -- gpu: 8-pin PCIe connectors required; psu: provided
    pcie_power_16pin         INTEGER, -- gpu: 16-pin 12V-2x6/12VHPWR required; psu: provided
    wattage                  INTEGER, -- psu: continuous output
    efficiency_rating        TEXT,    -- psu: '80 PLUS Gold'...
    modular                  TEXT,    -- psu: 'full','semi','none'
    cooler_type              TEXT,    -- cooler: 'air','aio'
    cooler_height_mm         INTEGER, -- cooler (air)
    radiator_size_mm         INTEGER, -- cooler (aio)
    cooler_tdp_rating_watts  INTEGER, -- cooler: heat it can dissipate
    interface                TEXT,    -- storage 'NVMe PCIe 4.0 x4'|'SATA III'; peripherals 'USB'|'Wireless'...
    pcie_gen                 INTEGER, -- gpu, storage (nvme), motherboard (primary x16 slot)
    read_speed_mbps          INTEGER, -- storage
    write_speed_mbps         INTEGER, -- storage
    m2_slots                 INTEGER, -- motherboard: M.2 slots provided; storage: 1 if the drive uses one
    sata_ports               INTEGER, -- motherboard
    wifi                     INTEGER, -- motherboard: 0/1
    screen_size_in           REAL,    -- monitor
    resolution               TEXT,    -- monitor: '2560x1440'
    refresh_rate_hz          INTEGER, -- monitor
    panel_type               TEXT,    -- monitor: 'IPS','VA','OLED','TN'
    connectivity             TEXT     -- monitor, peripheral: comma list of ports/links
);
CREATE INDEX idx_product_specs_socket ON product_specs(socket);

-- Build checks, read by validateBuildCompatibility (corecraft.world.compat.check_build evaluates them).
-- A rule compares an attribute (a product_specs column) of the build's left-category part(s) with one of its
-- right-category part(s); a rule applies only when both parts are in the build and both values are known:
--   operator 'eq'        left == right                                   (each left part vs each right part)
--   operator 'in_list'   left is an element of right's comma list
--   operator 'lte'       left <= right
--   operator 'gte'       left >= right
--   operator 'sum_lte'   sum over the build's parts (left_category '*' = every category) of left attribute x
--                        quantity, plus overhead_watts, <= right (e.g. CPU + GPU watts + 150 <= PSU wattage)
--   operator 'count_gte' right provides >= the sum over left parts of left attribute x quantity (connectors,
--                        memory modules vs slots, M.2 drives vs M.2 slots)
-- severity 'error' makes a build incompatible; 'warning' is advice (e.g. memory runs at a lower speed).
CREATE TABLE compatibility_rules (
    rule_id          TEXT PRIMARY KEY,  -- 'CR-001'
    name             TEXT NOT NULL,
    left_category    TEXT NOT NULL,
    left_attribute   TEXT NOT NULL,
    operator         TEXT NOT NULL CHECK (operator IN ('eq','in_list','lte','gte','sum_lte','count_gte')),
    right_category   TEXT NOT NULL,
    right_attribute  TEXT NOT NULL,
    overhead_watts   INTEGER,           -- sum_lte only: headroom added for the rest of the system
    severity         TEXT NOT NULL CHECK (severity IN ('error','warning')),
    message          TEXT NOT NULL,     -- shown to the customer when the rule fails
    kb_article_id    TEXT REFERENCES kb_articles(article_id)  -- the guide that explains it
);

CREATE TABLE warehouses (
    warehouse_id  TEXT PRIMARY KEY,   -- 'WH-RNO'
    name          TEXT NOT NULL,
    city          TEXT NOT NULL,
    state         TEXT NOT NULL REFERENCES shipping_regions(state_code),
    region        TEXT NOT NULL,      -- 'west','central','east'
    cutoff_hour_utc INTEGER NOT NULL  -- orders placed before this hour ship the same day
);

CREATE TABLE inventory (
    warehouse_id       TEXT NOT NULL REFERENCES warehouses(warehouse_id),
    product_id         TEXT NOT NULL REFERENCES products(product_id),
    quantity_on_hand   INTEGER NOT NULL CHECK (quantity_on_hand >= 0),
    quantity_reserved  INTEGER NOT NULL DEFAULT 0 CHECK (quantity_reserved >= 0),  -- held for open orders
    reorder_point      INTEGER NOT NULL,
    restock_eta        TEXT,          -- date the next purchase order lands; NULL if none
    bin_location       TEXT,
    updated_at         TEXT NOT NULL,
    PRIMARY KEY (warehouse_id, product_id)
);
CREATE INDEX idx_inventory_product ON inventory(product_id);

-- Customers and loyalty -------------------------------------------------------------------------------
CREATE TABLE loyalty_tiers (
    tier_id                   TEXT PRIMARY KEY,   -- 'member','silver','gold','platinum'
    name                      TEXT NOT NULL,
    rank                      INTEGER NOT NULL UNIQUE,  -- 0 = lowest
    min_annual_spend_cents    INTEGER NOT NULL,   -- trailing-12-month spend to qualify
    discount_percent          INTEGER NOT NULL,   -- member discount on eligible items
    points_per_dollar         INTEGER NOT NULL,
    free_shipping_threshold_cents INTEGER,        -- NULL = never free; 0 = always free
    return_window_days        INTEGER NOT NULL,   -- overrides the standard window when longer
    restocking_fee_waived     INTEGER NOT NULL CHECK (restocking_fee_waived IN (0,1)),
    extended_warranty_months  INTEGER NOT NULL,   -- added to manufacturer coverage
    priority_support          INTEGER NOT NULL CHECK (priority_support IN (0,1)),
    price_match               INTEGER NOT NULL CHECK (price_match IN (0,1)),
    benefits                  TEXT NOT NULL       -- human-readable summary
);

CREATE TABLE customers (
    customer_id         TEXT PRIMARY KEY,  -- 'CUST-10001'
    first_name          TEXT NOT NULL,
    last_name           TEXT NOT NULL,
    email               TEXT NOT NULL,     -- not UNIQUE: legacy imports left near-duplicates
    phone               TEXT,              -- may be missing (incomplete records)
    company_name        TEXT,
    address_line1       TEXT,
    address_line2       TEXT,
    city                TEXT,
    state               TEXT REFERENCES shipping_regions(state_code),
    postal_code         TEXT,
    country             TEXT NOT NULL DEFAULT 'US',
    loyalty_tier_id     TEXT NOT NULL REFERENCES loyalty_tiers(tier_id),
    loyalty_points      INTEGER NOT NULL DEFAULT 0,
    lifetime_spend_cents INTEGER NOT NULL DEFAULT 0,
    account_status      TEXT NOT NULL CHECK (account_status IN ('active','suspended','closed')),
    marketing_opt_in    INTEGER NOT NULL DEFAULT 0 CHECK (marketing_opt_in IN (0,1)),
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    notes               TEXT
);
CREATE INDEX idx_customers_email ON customers(email);
CREATE INDEX idx_customers_last_name ON customers(last_name, first_name);
CREATE INDEX idx_customers_phone ON customers(phone);

CREATE TABLE builds (
    build_id              TEXT PRIMARY KEY,  -- 'BLD-0001'
    customer_id           TEXT REFERENCES customers(customer_id),  -- NULL = staff showcase build
    name                  TEXT NOT NULL,
    purpose               TEXT,              -- 'gaming','workstation','streaming','budget','sff','office'
    status                TEXT NOT NULL CHECK (status IN ('draft','saved','ordered','archived')),
    compatibility_status  TEXT NOT NULL CHECK (compatibility_status IN ('unchecked','compatible','warnings',
                                                                         'incompatible')),
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    notes                 TEXT
);
CREATE INDEX idx_builds_customer ON builds(customer_id);

CREATE TABLE build_components (
    build_id    TEXT NOT NULL REFERENCES builds(build_id),
    product_id  TEXT NOT NULL REFERENCES products(product_id),
    quantity    INTEGER NOT NULL DEFAULT 1 CHECK (quantity > 0),
    PRIMARY KEY (build_id, product_id)
);
CREATE INDEX idx_build_components_product ON build_components(product_id);

-- Shipping reference data -----------------------------------------------------------------------------
CREATE TABLE shipping_regions (
    state_code  TEXT PRIMARY KEY,     -- US state / DC, e.g. 'CA'
    state_name  TEXT NOT NULL,
    region      TEXT NOT NULL         -- 'west','central','east'
);

-- Zone between a warehouse's region and the destination's region (1 = same region ... 3 = cross-country).
CREATE TABLE shipping_zones (
    origin_region       TEXT NOT NULL,
    destination_region  TEXT NOT NULL,
    zone                INTEGER NOT NULL CHECK (zone BETWEEN 1 AND 3),
    PRIMARY KEY (origin_region, destination_region)
);

CREATE TABLE carriers (
    carrier_id            TEXT PRIMARY KEY,  -- 'UPS','FEDEX','USPS','ONTRAC'
    name                  TEXT NOT NULL,
    tracking_url_template TEXT NOT NULL,     -- '{tracking_number}' placeholder
    support_phone         TEXT,
    claims_window_days    INTEGER NOT NULL   -- days after delivery to file a damage/loss claim with the carrier
);

CREATE TABLE shipping_services (
    service_id        TEXT PRIMARY KEY,   -- 'UPS-GROUND'
    carrier_id        TEXT NOT NULL REFERENCES carriers(carrier_id),
    name              TEXT NOT NULL,
    service_level     TEXT NOT NULL CHECK (service_level IN ('standard','expedited','overnight','freight')),
    min_transit_days  INTEGER NOT NULL,   -- business days
    max_transit_days  INTEGER NOT NULL,
    max_weight_grams  INTEGER NOT NULL,
    is_active         INTEGER NOT NULL CHECK (is_active IN (0,1))
);

CREATE TABLE shipping_rates (
    service_id      TEXT NOT NULL REFERENCES shipping_services(service_id),
    zone            INTEGER NOT NULL CHECK (zone BETWEEN 1 AND 3),
    base_cents      INTEGER NOT NULL,    -- per package
    per_kg_cents    INTEGER NOT NULL,    -- per started kilogram of shipping weight
    PRIMARY KEY (service_id, zone)
);

-- People and SLAs ------------------------------------------------------------------------------------
CREATE TABLE employees (
    employee_id  TEXT PRIMARY KEY,   -- 'EMP-001'
    full_name    TEXT NOT NULL,
    email        TEXT NOT NULL UNIQUE,
    team         TEXT NOT NULL,      -- 'support_t1','support_t2','escalations','warehouse','logistics','pricing'
    role         TEXT NOT NULL,      -- 'agent','lead','manager','associate'
    slack_handle TEXT NOT NULL,
    hired_on     TEXT NOT NULL,
    is_active    INTEGER NOT NULL CHECK (is_active IN (0,1))
);

-- Support SLAs are keyed by ticket priority (a higher loyalty tier may get its own, faster row);
-- delivery SLAs by shipping service level.
CREATE TABLE slas (
    sla_id                   TEXT PRIMARY KEY,  -- 'SLA-SUP-URGENT', 'SLA-DEL-EXPEDITED'
    name                     TEXT NOT NULL,
    sla_type                 TEXT NOT NULL CHECK (sla_type IN ('support','delivery')),
    priority                 TEXT,   -- support: 'low','normal','high','urgent'
    loyalty_tier_id          TEXT REFERENCES loyalty_tiers(tier_id),  -- support: NULL = any tier
    service_level            TEXT,   -- delivery: shipping_services.service_level
    first_response_minutes   INTEGER, -- support
    resolution_hours         INTEGER, -- support
    delivery_business_days   INTEGER, -- delivery: from ship date to promised delivery
    breach_action            TEXT NOT NULL,  -- what the policy says to do on a breach
    description              TEXT NOT NULL
);

-- Orders and fulfilment -------------------------------------------------------------------------------
CREATE TABLE promotions (
    promotion_id            TEXT PRIMARY KEY,  -- 'PROMO-001'
    code                    TEXT NOT NULL UNIQUE,  -- what the customer types, e.g. 'SPRING10'
    name                    TEXT NOT NULL,
    description             TEXT NOT NULL,
    discount_type           TEXT NOT NULL CHECK (discount_type IN ('percent','fixed','free_shipping')),
    discount_value          INTEGER NOT NULL,  -- percent (e.g. 10) or cents (fixed); 0 for free_shipping
    max_discount_cents      INTEGER,           -- cap for percent discounts
    min_order_cents         INTEGER NOT NULL DEFAULT 0,
    eligible_category       TEXT,              -- NULL = any category
    eligible_brand_id       TEXT REFERENCES brands(brand_id),  -- NULL = any brand
    min_loyalty_tier_id     TEXT REFERENCES loyalty_tiers(tier_id),  -- NULL = everyone
    first_order_only        INTEGER NOT NULL DEFAULT 0 CHECK (first_order_only IN (0,1)),
    max_uses_per_customer   INTEGER,           -- NULL = unlimited
    stackable               INTEGER NOT NULL DEFAULT 0 CHECK (stackable IN (0,1)),
    starts_at               TEXT NOT NULL,
    expires_at              TEXT NOT NULL,
    is_active               INTEGER NOT NULL CHECK (is_active IN (0,1)),  -- may be 1 past expiry (noise)
    terms                   TEXT NOT NULL
);

CREATE TABLE orders (
    order_id             TEXT PRIMARY KEY,  -- 'ORD-200001'
    customer_id          TEXT NOT NULL REFERENCES customers(customer_id),
    status               TEXT NOT NULL CHECK (status IN ('pending','processing','on_hold','shipped','delivered',
                                                          'cancelled','returned','partially_returned')),
    sales_channel        TEXT NOT NULL,     -- 'web','phone','marketplace','in_store_pickup'
    placed_at            TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    currency             TEXT NOT NULL DEFAULT 'USD',
    subtotal_cents       INTEGER NOT NULL,  -- sum of quantity * unit_price over lines, before discounts
    discount_cents       INTEGER NOT NULL DEFAULT 0,  -- loyalty member pricing + promotion; = sum of line discounts
    shipping_cents       INTEGER NOT NULL DEFAULT 0,
    tax_cents            INTEGER NOT NULL DEFAULT 0,
    total_cents          INTEGER NOT NULL,  -- subtotal - discount + shipping + tax
    promotion_id         TEXT REFERENCES promotions(promotion_id),
    shipping_service_id  TEXT REFERENCES shipping_services(service_id),
    build_id             TEXT REFERENCES builds(build_id),  -- order placed from a saved build
    payment_method       TEXT NOT NULL,     -- 'credit_card','paypal','financing','gift_card'
    payment_status       TEXT NOT NULL CHECK (payment_status IN ('authorized','captured','refunded',
                                                                  'partially_refunded','failed','voided')),
    ship_name            TEXT,
    ship_address_line1   TEXT,
    ship_address_line2   TEXT,
    ship_city            TEXT,
    ship_state           TEXT REFERENCES shipping_regions(state_code),
    ship_postal_code     TEXT,
    ship_country         TEXT,
    notes                TEXT
);
CREATE INDEX idx_orders_customer ON orders(customer_id);
CREATE INDEX idx_orders_status ON orders(status);
CREATE INDEX idx_orders_placed_at ON orders(placed_at);

CREATE TABLE order_lines (
    order_line_id     INTEGER PRIMARY KEY,
    order_id          TEXT NOT NULL REFERENCES orders(order_id),
    line_number       INTEGER NOT NULL,
    product_id        TEXT NOT NULL REFERENCES products(product_id),
    quantity          INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents  INTEGER NOT NULL,   -- price at the time of the order
    discount_cents    INTEGER NOT NULL DEFAULT 0,
    line_total_cents  INTEGER NOT NULL,   -- quantity * unit_price - discount
    quantity_returned INTEGER NOT NULL DEFAULT 0,
    serial_number     TEXT,               -- recorded at pick time for serialized parts; may be missing
    UNIQUE (order_id, line_number)
);
CREATE INDEX idx_order_lines_order ON order_lines(order_id);
CREATE INDEX idx_order_lines_product ON order_lines(product_id);

-- Each system logs its own view of an order's life; they do not always agree (deliberate noise).
CREATE TABLE order_status_history (
    history_id  INTEGER PRIMARY KEY,
    order_id    TEXT NOT NULL REFERENCES orders(order_id),
    status      TEXT NOT NULL,
    changed_at  TEXT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('oms','warehouse','carrier_sync','agent','payment')),
    note        TEXT
);
CREATE INDEX idx_order_status_history_order ON order_status_history(order_id);

CREATE TABLE shipments (
    shipment_id             TEXT PRIMARY KEY,  -- 'SHP-300001'
    order_id                TEXT NOT NULL REFERENCES orders(order_id),
    warehouse_id            TEXT NOT NULL REFERENCES warehouses(warehouse_id),
    carrier_id              TEXT NOT NULL REFERENCES carriers(carrier_id),
    service_id              TEXT NOT NULL REFERENCES shipping_services(service_id),
    sla_id                  TEXT REFERENCES slas(sla_id),
    tracking_number         TEXT,              -- NULL until a label exists
    status                  TEXT NOT NULL CHECK (status IN ('label_created','in_transit','out_for_delivery',
                                                              'delivered','exception','lost','returned_to_sender')),
    shipped_at              TEXT,              -- per the warehouse system
    promised_delivery_date  TEXT,              -- SLA deadline given to the customer
    estimated_delivery_date TEXT,              -- carrier's latest estimate
    delivered_at            TEXT,
    weight_grams            INTEGER NOT NULL,
    cost_cents              INTEGER NOT NULL,  -- what the carrier charged us
    updated_at              TEXT NOT NULL
);
CREATE INDEX idx_shipments_order ON shipments(order_id);
CREATE INDEX idx_shipments_tracking ON shipments(tracking_number);

CREATE TABLE shipment_events (
    event_id     INTEGER PRIMARY KEY,
    shipment_id  TEXT NOT NULL REFERENCES shipments(shipment_id),
    occurred_at  TEXT NOT NULL,       -- carrier scan time (UTC)
    event_code   TEXT NOT NULL,       -- 'label_created','picked_up','in_transit','arrived_at_facility',
                                      -- 'out_for_delivery','delivered','delivery_attempted','exception',
                                      -- 'damaged','returned_to_sender'
    location     TEXT,
    description  TEXT NOT NULL
);
CREATE INDEX idx_shipment_events_shipment ON shipment_events(shipment_id, occurred_at);

-- People ----------------------------------------------------------------------------------------------
CREATE TABLE support_tickets (
    ticket_id              TEXT PRIMARY KEY,  -- 'TKT-50001'
    customer_id            TEXT NOT NULL REFERENCES customers(customer_id),
    order_id               TEXT REFERENCES orders(order_id),
    product_id             TEXT REFERENCES products(product_id),
    subject                TEXT NOT NULL,
    description            TEXT NOT NULL,
    category               TEXT NOT NULL,  -- 'order_status','return','warranty','compatibility','shipping_damage',
                                           -- 'billing','technical','account','price_match','promotion'
    channel                TEXT NOT NULL CHECK (channel IN ('email','chat','phone','web_form','social')),
    priority               TEXT NOT NULL CHECK (priority IN ('low','normal','high','urgent')),
    status                 TEXT NOT NULL CHECK (status IN ('new','open','pending_customer','escalated',
                                                            'resolved','closed')),
    assigned_to            TEXT REFERENCES employees(employee_id),
    sla_id                 TEXT REFERENCES slas(sla_id),
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL,
    first_response_due_at  TEXT,
    first_response_at      TEXT,
    resolution_due_at      TEXT,
    resolved_at            TEXT,
    satisfaction_score     INTEGER CHECK (satisfaction_score BETWEEN 1 AND 5),
    tags                   TEXT            -- comma list
);
CREATE INDEX idx_support_tickets_customer ON support_tickets(customer_id);
CREATE INDEX idx_support_tickets_order ON support_tickets(order_id);
CREATE INDEX idx_support_tickets_status ON support_tickets(status);

CREATE TABLE ticket_messages (
    message_id          INTEGER PRIMARY KEY,
    ticket_id           TEXT NOT NULL REFERENCES support_tickets(ticket_id),
    author_type         TEXT NOT NULL CHECK (author_type IN ('customer','agent','system')),
    author_employee_id  TEXT REFERENCES employees(employee_id),  -- agent messages
    sent_at             TEXT NOT NULL,
    channel             TEXT NOT NULL,
    is_internal_note    INTEGER NOT NULL DEFAULT 0 CHECK (is_internal_note IN (0,1)),
    body                TEXT NOT NULL
);
CREATE INDEX idx_ticket_messages_ticket ON ticket_messages(ticket_id, sent_at);

-- Returns, refunds, warranty -------------------------------------------------------------------------
CREATE TABLE returns (
    return_id            TEXT PRIMARY KEY,  -- 'RMA-40001'
    order_id             TEXT NOT NULL REFERENCES orders(order_id),
    customer_id          TEXT NOT NULL REFERENCES customers(customer_id),
    ticket_id            TEXT REFERENCES support_tickets(ticket_id),
    return_type          TEXT NOT NULL CHECK (return_type IN ('refund','exchange','store_credit')),
    reason               TEXT NOT NULL,     -- 'defective','wrong_item','not_needed','damaged_in_transit',
                                            -- 'incompatible','changed_mind','arrived_late'
    status               TEXT NOT NULL CHECK (status IN ('requested','approved','label_sent','received',
                                                         'refunded','exchanged','rejected','cancelled')),
    requested_at         TEXT NOT NULL,
    received_at          TEXT,
    restocking_fee_cents INTEGER NOT NULL DEFAULT 0,
    refund_amount_cents  INTEGER,
    exchange_order_id    TEXT REFERENCES orders(order_id),
    notes                TEXT
);
CREATE INDEX idx_returns_order ON returns(order_id);
CREATE INDEX idx_returns_customer ON returns(customer_id);

CREATE TABLE return_lines (
    return_line_id   INTEGER PRIMARY KEY,
    return_id        TEXT NOT NULL REFERENCES returns(return_id),
    order_line_id    INTEGER NOT NULL REFERENCES order_lines(order_line_id),
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    item_condition   TEXT NOT NULL CHECK (item_condition IN ('unopened','opened','damaged','defective'))
);
CREATE INDEX idx_return_lines_return ON return_lines(return_id);

CREATE TABLE refunds (
    refund_id     TEXT PRIMARY KEY,  -- 'RF-60001'
    order_id      TEXT NOT NULL REFERENCES orders(order_id),
    return_id     TEXT REFERENCES returns(return_id),
    ticket_id     TEXT REFERENCES support_tickets(ticket_id),
    amount_cents  INTEGER NOT NULL CHECK (amount_cents > 0),
    method        TEXT NOT NULL CHECK (method IN ('original_payment','store_credit','gift_card')),
    reason        TEXT NOT NULL,     -- 'return','price_match','shipping_delay','damage_claim','goodwill','cancellation'
    status        TEXT NOT NULL CHECK (status IN ('pending','issued','failed')),
    created_at    TEXT NOT NULL,
    issued_at     TEXT
);
CREATE INDEX idx_refunds_order ON refunds(order_id);

-- Coverage for a product = the most specific active policy: (brand, category) > (brand, any) > (any, category).
CREATE TABLE warranty_policies (
    warranty_policy_id  TEXT PRIMARY KEY,  -- 'WP-001'
    brand_id            TEXT REFERENCES brands(brand_id),  -- NULL = any brand
    category            TEXT,                              -- NULL = any category
    coverage_months     INTEGER NOT NULL,
    provider            TEXT NOT NULL CHECK (provider IN ('manufacturer','corecraft')),
    claim_process       TEXT NOT NULL CHECK (claim_process IN ('advance_replacement','rma_via_corecraft',
                                                                'manufacturer_direct')),
    covers_accidental_damage INTEGER NOT NULL CHECK (covers_accidental_damage IN (0,1)),
    requires_registration INTEGER NOT NULL CHECK (requires_registration IN (0,1)),
    terms               TEXT NOT NULL,
    effective_from      TEXT NOT NULL,
    effective_to        TEXT          -- NULL = current
);

CREATE TABLE warranty_claims (
    claim_id            TEXT PRIMARY KEY,  -- 'WC-70001'
    customer_id         TEXT NOT NULL REFERENCES customers(customer_id),
    order_id            TEXT NOT NULL REFERENCES orders(order_id),
    order_line_id       INTEGER REFERENCES order_lines(order_line_id),
    product_id          TEXT NOT NULL REFERENCES products(product_id),
    warranty_policy_id  TEXT REFERENCES warranty_policies(warranty_policy_id),
    ticket_id           TEXT REFERENCES support_tickets(ticket_id),
    serial_number       TEXT,
    issue_description   TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('submitted','under_review','approved','denied',
                                                        'replacement_shipped','repaired','refunded')),
    filed_at            TEXT NOT NULL,
    decided_at          TEXT,
    resolution          TEXT
);
CREATE INDEX idx_warranty_claims_customer ON warranty_claims(customer_id);

-- Knowledge ------------------------------------------------------------------------------------------
CREATE TABLE company_policies (
    policy_id             TEXT PRIMARY KEY,  -- 'POL-RETURNS-v3'
    policy_area           TEXT NOT NULL,     -- 'returns','restocking','price_matching','damage_claims','refunds',
                                             -- 'escalation','warranty','shipping','loyalty','promotions',
                                             -- 'privacy','compatibility'
    title                 TEXT NOT NULL,
    version               INTEGER NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('active','retired')),
    effective_from        TEXT NOT NULL,
    effective_to          TEXT,              -- NULL while active
    supersedes_policy_id  TEXT REFERENCES company_policies(policy_id),
    body                  TEXT NOT NULL,     -- Markdown, what agents read and must follow
    UNIQUE (policy_area, version)
);

-- The numbers inside a policy, for tools that enforce it (e.g. processReturn reads returns.window_days).
CREATE TABLE policy_parameters (
    policy_id    TEXT NOT NULL REFERENCES company_policies(policy_id),
    param_key    TEXT NOT NULL,      -- e.g. 'window_days', 'restocking_fee_percent'
    param_value  TEXT NOT NULL,
    value_type   TEXT NOT NULL CHECK (value_type IN ('int','float','text','bool')),
    description  TEXT NOT NULL,
    PRIMARY KEY (policy_id, param_key)
);

CREATE TABLE kb_articles (
    article_id         TEXT PRIMARY KEY,  -- 'KB-1001'
    title              TEXT NOT NULL,
    category           TEXT NOT NULL,     -- 'troubleshooting','compatibility','policy','shipping','warranty','how_to'
    body               TEXT NOT NULL,     -- Markdown
    tags               TEXT,              -- comma list
    status             TEXT NOT NULL CHECK (status IN ('published','archived','draft')),
    author_employee_id TEXT REFERENCES employees(employee_id),
    related_policy_id  TEXT REFERENCES company_policies(policy_id),
    superseded_by      TEXT REFERENCES kb_articles(article_id),  -- set on some stale articles, not all
    published_at       TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    view_count         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX idx_kb_articles_category ON kb_articles(category);

CREATE TABLE ops_chat_messages (
    message_id          INTEGER PRIMARY KEY,
    channel             TEXT NOT NULL,   -- '#support-escalations','#warehouse-ops','#shipping','#pricing',
                                         -- '#general','#catalog'
    author_employee_id  TEXT NOT NULL REFERENCES employees(employee_id),
    posted_at           TEXT NOT NULL,
    thread_parent_id    INTEGER REFERENCES ops_chat_messages(message_id),
    related_order_id    TEXT REFERENCES orders(order_id),
    related_product_id  TEXT REFERENCES products(product_id),
    body                TEXT NOT NULL
);
CREATE INDEX idx_ops_chat_channel ON ops_chat_messages(channel, posted_at);

-- Text search ---------------------------------------------------------------------------------------------
-- A trigram index behind searchCustomers' free text (names, emails, companies): a substring of 3 or more
-- characters is found through the index instead of by testing every row of the table agents search most.
-- Derived data: triggers keep it equal to its table on every write, and world diffs skip it. Keyed by the
-- customer id (stored), not by rowid, which VACUUM may renumber in a table without an INTEGER PRIMARY KEY.
-- (Knowledge text is not indexed: its searches read few, long rows, and an index gained them little while every
-- fork parses each table and trigger of the schema.)
CREATE VIRTUAL TABLE customers_text USING fts5(
    customer_id UNINDEXED, full_name, email, company_name, tokenize = 'trigram', columnsize = 0
);
CREATE TRIGGER customers_text_insert AFTER INSERT ON customers BEGIN
    INSERT INTO customers_text (customer_id, full_name, email, company_name)
    VALUES (new.customer_id, new.first_name || ' ' || new.last_name, new.email, new.company_name);
END;
CREATE TRIGGER customers_text_delete AFTER DELETE ON customers BEGIN
    DELETE FROM customers_text WHERE customer_id = old.customer_id;
END;
CREATE TRIGGER customers_text_update
AFTER UPDATE OF customer_id, first_name, last_name, email, company_name ON customers BEGIN
    DELETE FROM customers_text WHERE customer_id = old.customer_id;
    INSERT INTO customers_text (customer_id, full_name, email, company_name)
    VALUES (new.customer_id, new.first_name || ' ' || new.last_name, new.email, new.company_name);
END;

-- Written by tools at run time (one row per state-changing action); empty in a freshly built world.
CREATE TABLE audit_log (
    log_id       INTEGER PRIMARY KEY,
    occurred_at  TEXT NOT NULL,
    actor        TEXT NOT NULL,      -- 'agent' or an employee_id
    action       TEXT NOT NULL,      -- tool name, e.g. 'processReturn'
    entity_type  TEXT NOT NULL,      -- table name
    entity_id    TEXT NOT NULL,
    details      TEXT                -- JSON
);
"""

# Tables in a safe insertion order (parents before children).
TABLES: tuple[str, ...] = (
    "meta",
    "brands",
    "shipping_regions",
    "shipping_zones",
    "warehouses",
    "carriers",
    "shipping_services",
    "shipping_rates",
    "loyalty_tiers",
    "employees",
    "slas",
    "products",
    "product_specs",
    "inventory",
    "company_policies",
    "policy_parameters",
    "kb_articles",
    "compatibility_rules",
    "warranty_policies",
    "promotions",
    "customers",
    "builds",
    "build_components",
    "orders",
    "order_lines",
    "order_status_history",
    "shipments",
    "shipment_events",
    "support_tickets",
    "ticket_messages",
    "returns",
    "return_lines",
    "refunds",
    "warranty_claims",
    "ops_chat_messages",
    "audit_log",
)

# Search indexes derived from the tables above (FTS5, kept in step by triggers): not data of their own, so world
# diffs skip them and their FTS5 shadow tables ("<name>_data", "<name>_idx", ...).
TEXT_INDEXES: tuple[str, ...] = ("customers_text",)


@functools.cache
def sqlite_has_trigram_fts5() -> bool:
    """Whether this Python's SQLite has FTS5 with the trigram tokenizer (3.34+, built with FTS5, as the
    python.org and most distribution builds are), which the text indexes need."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE VIRTUAL TABLE probe USING fts5(text, tokenize = 'trigram')")
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()
    return True


def optimize_text_indexes(conn: sqlite3.Connection) -> None:
    """Merge each search index into one segment. Triggers index rows one at a time, leaving many small segments
    that every query reads: a world is optimized once its rows are in (generation, task planting)."""
    for index in TEXT_INDEXES:
        conn.execute(f"INSERT INTO {index} ({index}) VALUES ('optimize')")


# The data tables stats() counts under "tables": everything but bookkeeping (entity totals use CORE_ENTITY_TYPES).
ENTITY_TABLES: tuple[str, ...] = tuple(t for t in TABLES if t not in ("meta", "audit_log"))

# The paper's 14 entity types and the table that holds each.
CORE_ENTITY_TYPES: dict[str, str] = {
    "customers": "customers",
    "orders": "orders",
    "products": "products",
    "builds": "builds",
    "support_tickets": "support_tickets",
    "slas": "slas",
    "shipping_records": "shipments",
    "compatibility_rules": "compatibility_rules",
    "warranty_policies": "warranty_policies",
    "loyalty_tiers": "loyalty_tiers",
    "kb_articles": "kb_articles",
    "promotions": "promotions",
    "inventory": "inventory",
    "company_policies": "company_policies",
}
