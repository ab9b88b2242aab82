"""Row shapes bench can load into its `account` entity: what the rows look like decides how
well a Changes frame compresses, so a compression figure names the shape it was taken on.

* `narrow`, bench's CRM rows (`bench.common.crm_rows`, the default everywhere): a random
  uuid key, a random owner, "Account <n>", a city of six, a random amount, a timestamp a
  second apart and a random status int. ~85 wire bytes per row, about half of them
  entropy: the shape every ceiling of docs/ARCHITECTURE.md was measured on.
* `crm`, rows shaped like a CRM's contacts: issue 16 sets its compression goal on "1M CRM
  rows are ~150 MB on the wire", ~150 bytes per row. The columns are a subset of a
  Dynamics 365 contact's (contactid, ownerid, firstname, lastname, the parent account's
  name, emailaddress1, telephone1, address1_city, address1_country, statuscode as its
  label, createdon, modifiedon, description), ~156 wire bytes per row with the version
  (`tests/bench/test_shapes.py` holds it between 140 and 170). The values are deterministic
  for a seed and no more repetitive than a real org's, on purpose: first and last names
  drawn from 100 each (common given names and surnames of the countries below); 20,000
  companies, a root of 200 and a line of business of 100 ("Cedar Foods"); the e-mail built
  from the name and the company's root ("j.smith@cedar.com"); phone numbers in E.164 form,
  random after the city's country prefix; 40 cities in 18 countries; a status of 5
  weighted labels; created at a random second of 2021-2026 and modified 0-90 days later
  (whole seconds, as CRM timestamps are); a description on a quarter of the rows from 10
  sentence templates (most CRM descriptions are empty). Where a choice had to be made,
  text derivable from other columns was kept short (a longer e-mail domain would compress
  away and flatter the ratio). What the shape lacks: real names' long tail (an org has
  thousands of surnames), street addresses, and the many sparse or defaulted columns of a
  real CRM table (nulls and defaults compress well, so a real table may do better). Its
  figures estimate what a real org's rows allow; check them on one.

A shape is its `account` columns (in the model's order: COPY and the wire use that order),
a row generator for COPY, and `wire_values`, a record as the feed's casts send it (uuid and
numeric as text, timestamps as integer microseconds), for measuring codecs without a
database.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

from bench.common import CRM_MODEL, crm_rows

__all__ = ["SHAPES", "Shape", "crm_contact_rows", "model_with", "wire_values"]

#: Owners of the org's rows (bench.common.OWNERS: the same 1,000 for both shapes).
OWNERS: Final = 1000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _words(count: int, text: str) -> tuple[str, ...]:
    """The first `count` distinct words of `text` (a list that says how many it holds)."""
    words = tuple(dict.fromkeys(text.split()))[:count]
    if len(words) != count:
        raise RuntimeError(f"{len(words)} distinct words where {count} were meant")
    return words


FIRST_NAMES: Final = _words(
    100,
    "James Mary John Patricia Robert Jennifer Michael Linda David Elizabeth William Barbara"
    " Richard Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa"
    " Anthony Betty Mark Sandra Paul Ashley Steven Emily Andrew Donna Kenneth Michelle Joshua"
    " Carol Kevin Amanda Brian Melissa George Deborah Timothy Stephanie Ronald Rebecca Jason"
    " Laura Pierre Marie Jean Camille Louis Chloe Lukas Hannah Felix Lena Jonas Anna Paul"
    " Sophie Marco Giulia Luca Sofia Matteo Chiara Pablo Lucia Javier Carmen Diego Elena"
    " Joao Beatriz Tiago Ines Lars Ingrid Erik Astrid Piotr Agnieszka Tomasz Katarzyna Hiroshi"
    " Yuki Kenji Aiko Wei Mei Carlos Ana Ahmed Fatima Omar Leila Ivan Olga",
)
LAST_NAMES: Final = _words(
    100,
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez"
    " Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Thompson White Harris"
    " Clark Lewis Robinson Walker Young Allen Martin Bernard Dubois Durand Lefebvre Moreau"
    " Laurent Simon Michel Leroy Muller Schmidt Schneider Fischer Weber Meyer Wagner Becker"
    " Schulz Hoffmann Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Greco"
    " Fernandez Sanchez Perez Gomez Diaz Silva Santos Ferreira Pereira Oliveira Costa"
    " Hansen Johansson Nilsson Larsen Nowak Kowalski Wisniewski Wojcik Sato Suzuki Takahashi"
    " Tanaka Watanabe Wang Li Zhang Liu Chen Yang Kim Park Nguyen Tran Ivanov Petrov Popescu"
    " Novak Horvat Jensen Andersen Pedersen",
)
COMPANY_ROOTS: Final = _words(
    200,
    "Acme Globex Initech Umbrella Hooli Stark Wayne Wonka Tyrell Cyberdyne Soylent Vandelay"
    " Aperture Gringotts Oceanic Nakatomi Massive Dynamic Pied Piper Bluth Prestige Sterling"
    " Dunder Virtucon Monarch Oscorp Zorg Blackmesa Genco Olivia Northwind Contoso Fabrikam"
    " Tailspin Litware Proseware Adventure Wingtip Fourth Coffee Alpine Woodgrove Lucerne"
    " Margie Trey Adatum Relecloud Munson Humongous Consolidated Datum Southridge Graphic"
    " Wide World Blue Yonder Coho Lamna Liberty Baldwin Fincher Hanover Mercer Radiant"
    " Summit Pinnacle Keystone Evergreen Redwood Cedar Birch Granite Cobalt Falcon Harbor"
    " Meridian Vertex Apex Horizon Beacon Crescent Lighthouse Orchard Riverside Lakeside"
    " Highland Northern Southern Eastern Western Central Atlantic Pacific Alpine Nordic"
    " Iberia Helvetic Baltic Danube Rhine Loire Tagus Po Thames Hudson Yukon Sierra Andes"
    " Atlas Titan Orion Vega Lyra Nova Polaris Sirius Aurora Zenith Quantum Vector Matrix"
    " Nexus Fusion Vortex Catalyst Momentum Kinetic Dynamo Turbine Piston Gear Anchor"
    " Compass Sextant Beacon Signal Relay Circuit Silicon Carbon Nitro Helix Prism Quartz"
    " Onyx Jade Amber Coral Indigo Scarlet Crimson Azure Ivory Ebony Silver Golden Copper"
    " Iron Steel Stone Brick Timber Harvest Meadow Prairie Canyon Mesa Delta Bayou Fjord"
    " Tundra Savanna Oasis Lagoon Reef Tide Current Breeze Gale Storm Thunder Lightning"
    " Ember Blaze Flame Spark Glow Lumen Photon Pixel Byte Cipher Quill Ledger Tally Abacus"
    " Sunrise Willow Maple Oakridge",
)
#: A company is a root and a line of business ("Cedar Foods"): 20,000 of them.
INDUSTRIES: Final = _words(
    100,
    "Foods Labs Tech Bank Air Media Energy Health Retail Motors Steel Pharma Logic Data Farms"
    " Works Tools Design Build Power Water Solar Wind Marine Freight Cargo Rail Auto Parts"
    " Supply Trade Sales Capital Finance Invest Realty Homes Hotels Travel Tours Sports Games"
    " Music Films Books Print Paper Pack Plastics Metals Mining Oil Gas Chem Bio Gen Med Care"
    " Dental Vision Clinic Pets Garden Decor Fashion Wear Shoes Textiles Optics Robotics Cloud"
    " Net Soft Web Mobile Telecom Radio Security Guard Legal Audit Tax Consult Staff Talent Edu"
    " School Learn Bakery Dairy Meat Fresh Organic Brew Wine Tea Spice Grain Seeds Agro Fleet"
    " Logistics Transit Ports Events",
)
#: (city, country, phone prefix): address1_city, address1_country, telephone1's start.
CITIES: Final = (
    ("New York", "USA", "+1"), ("Chicago", "USA", "+1"), ("Austin", "USA", "+1"),
    ("Seattle", "USA", "+1"), ("Boston", "USA", "+1"), ("Toronto", "Canada", "+1"),
    ("Montreal", "Canada", "+1"), ("London", "UK", "+44"), ("Manchester", "UK", "+44"),
    ("Leeds", "UK", "+44"), ("Paris", "France", "+33"), ("Lyon", "France", "+33"),
    ("Lille", "France", "+33"), ("Berlin", "Germany", "+49"), ("Munich", "Germany", "+49"),
    ("Hamburg", "Germany", "+49"), ("Cologne", "Germany", "+49"), ("Milan", "Italy", "+39"),
    ("Rome", "Italy", "+39"), ("Turin", "Italy", "+39"), ("Madrid", "Spain", "+34"),
    ("Barcelona", "Spain", "+34"), ("Valencia", "Spain", "+34"), ("Lisbon", "Portugal", "+351"),
    ("Porto", "Portugal", "+351"), ("Amsterdam", "Netherlands", "+31"),
    ("Rotterdam", "Netherlands", "+31"), ("Stockholm", "Sweden", "+46"),
    ("Gothenburg", "Sweden", "+46"), ("Copenhagen", "Denmark", "+45"),
    ("Oslo", "Norway", "+47"), ("Warsaw", "Poland", "+48"), ("Krakow", "Poland", "+48"),
    ("Zurich", "Switzerland", "+41"), ("Geneva", "Switzerland", "+41"),
    ("Vienna", "Austria", "+43"), ("Tokyo", "Japan", "+81"), ("Osaka", "Japan", "+81"),
    ("Brussels", "Belgium", "+32"), ("Dublin", "Ireland", "+353"),
)  # fmt: skip
#: statuscode labels and their weights (most contacts of an org are active).
STATUSES: Final = (("Active", 60), ("Inactive", 15), ("Qualified", 12), ("New", 8), ("Lost", 5))
PRODUCTS: Final = (
    "Field Service", "Sales Hub", "Analytics", "Mobile Offline", "Support Plan", "Onboarding",
    "Premium Tier", "API Access",
)  # fmt: skip
DESCRIPTIONS: Final = (
    "Met at {event}; asked about {product}.",
    "Renewal due in Q{quarter}.",
    "Prefers e-mail. Decision maker for {product}.",
    "Call back after {month}.",
    "Referred by {first} {last}.",
    "Trial of {product} started.",
    "Budget approved for {product}.",
    "Moved to {city} office.",
    "Key contact, escalate to owner.",
    "Asked for a quote on {product}.",
)
EVENTS: Final = ("the expo", "a webinar", "the user group", "a customer visit", "the summit")
MONTHS: Final = ("January", "March", "May", "July", "September", "November")
#: A description on this share of rows; the others leave it NULL, as most CRM rows do.
DESCRIBED: Final = 0.25
#: A phone number in E.164 form ("+4930..."), as CRMs normalize them: "+" and 12 digits here.
E164_DIGITS: Final = 13
CREATED_FROM: Final = datetime(2021, 1, 1, tzinfo=UTC)
CREATED_SPAN_S: Final = 5 * 365 * 86400
MODIFIED_WITHIN_S: Final = 90 * 86400

CRM_COLUMNS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "id": "uuid",
        "owner_id": "integer",
        "first_name": "text",
        "last_name": "text",
        "company": "text",
        "email": "text",
        "phone": "text",
        "city": "text",
        "country": "text",
        "status": "text",
        "created_at": "timestamp",
        "modified_at": "timestamp",
        "description": "text",
    }
)


def _domain(company: str) -> str:
    """ "Cedar Foods" -> "cedar.com" (or .eu: both are common in one org)."""
    root = company.split(" ", 1)[0].lower()
    return f"{root}.{'eu' if len(root) % 3 == 0 else 'com'}"


def crm_contact_rows(count: int, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    """`count` contact-like rows in CRM_COLUMNS order, the same for the same seed."""
    rnd = random.Random(seed)
    companies = [f"{root} {line}" for root in COMPANY_ROOTS for line in INDUSTRIES]
    labels = [label for label, _ in STATUSES]
    weights = [weight for _, weight in STATUSES]
    for _ in range(count):
        first, last = rnd.choice(FIRST_NAMES), rnd.choice(LAST_NAMES)
        company = rnd.choice(companies)
        city, country, prefix = rnd.choice(CITIES)
        created = CREATED_FROM + timedelta(seconds=rnd.randrange(CREATED_SPAN_S))
        modified = created + timedelta(seconds=rnd.randrange(MODIFIED_WITHIN_S))
        description = None
        if rnd.random() < DESCRIBED:
            description = rnd.choice(DESCRIPTIONS).format(
                event=rnd.choice(EVENTS),
                product=rnd.choice(PRODUCTS),
                quarter=rnd.randrange(1, 5),
                month=rnd.choice(MONTHS),
                first=rnd.choice(FIRST_NAMES),
                last=rnd.choice(LAST_NAMES),
                city=rnd.choice(CITIES)[0],
            )
        yield (
            uuid.UUID(int=rnd.getrandbits(128), version=4),
            rnd.randrange(OWNERS),
            first,
            last,
            company,
            f"{first[0].lower()}.{last.lower()}@{_domain(company)}",
            f"{prefix}{rnd.randrange(10**8, 10**9)}{rnd.randrange(10**4):04d}"[:E164_DIGITS],
            city,
            country,
            rnd.choices(labels, weights)[0],
            created,
            modified,
            description,
        )


def wire_values(record: Sequence[Any], version: int) -> list[Any]:
    """A COPY record as the feed sends it (`wire_select_list`: uuid and numeric as text,
    timestamps as integer microseconds since the epoch), then the row version."""
    out: list[Any] = []
    for value in record:
        if isinstance(value, uuid.UUID | Decimal):
            out.append(str(value))
        elif isinstance(value, datetime):
            out.append((value - _EPOCH) // timedelta(microseconds=1))
        else:
            out.append(value)
    out.append(version)
    return out


@dataclass(frozen=True)
class Shape:
    """The `account` entity's columns and the rows bench loads into it."""

    name: str
    columns: Mapping[str, str]
    rows: Callable[[int, int], Iterator[tuple[Any, ...]]]
    writable: tuple[str, ...]


def model_with(base: Mapping[str, Any], shape: Shape) -> dict[str, Any]:
    """`base` (a client model as JSON) with its `account` entity in `shape`'s columns."""
    entities = dict(base["entities"])
    entities["account"] = {
        **entities["account"],
        "columns": dict(shape.columns),
        "writable": list(shape.writable),
    }
    return {**base, "entities": entities}


def _narrow_shape() -> Shape:
    account = CRM_MODEL["entities"]["account"]
    return Shape(
        "narrow",
        MappingProxyType(dict(account["columns"])),
        lambda count, seed: crm_rows(count, seed),
        tuple(account["writable"]),
    )


SHAPES: Final[Mapping[str, Shape]] = MappingProxyType(
    {
        "narrow": _narrow_shape(),
        "crm": Shape("crm", CRM_COLUMNS, crm_contact_rows, ("email", "phone", "status")),
    }
)
