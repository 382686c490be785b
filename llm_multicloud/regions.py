"""Built-in table of public cloud regions, and the residency vocabulary.

An endpoint is declared as ``provider`` + ``region`` (``aws`` + ``us-east-1``,
``gcp`` + ``europe-west4``, ``azure`` + ``westeurope``, ``oci`` + ``eu-frankfurt-1``).
From this table the library infers, per endpoint:

* the **country** that hosts the region (ISO 3166-1 alpha-2, upper case);
* the **residency tags** of that country: the country code itself plus every bloc
  that contains it (``DE`` -> ``{"DE", "EU", "EEA", "EMEA"}``), which is what
  residency policies such as ``allow: [EU]`` are matched against;
* **coordinates**, used by the geographic latency prior (great-circle distance
  between the user's location and the region);
* whether the region belongs to a **sovereign** partition (AWS GovCloud and China,
  Azure Government and China, OCI government/sovereign realms, ...), which needs
  separate accounts and is never a drop-in failover target for a commercial one.

The table is a **snapshot** (see :data:`SNAPSHOT`), not a live feed: providers open
regions every few months. A region missing from it is not an error for the library
as a whole -- catalogs can declare or override ``country``/``residency``/coordinates
per endpoint, and those explicit values always win over this table. Likewise the
blocs below are the library's default vocabulary; a deployment with a stricter
reading of, say, "MENA" should spell out countries in its policy.

Everything here is pure data and pure functions (stdlib only, no I/O); the lookup
dicts are built once at import. The public dicts (:data:`BLOCS`, :data:`COUNTRIES`)
are meant to be read, not mutated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "BLOCS",
    "COUNTRIES",
    "PROVIDERS",
    "SNAPSHOT",
    "Region",
    "all_regions",
    "distance_km",
    "expand_tag",
    "find_code",
    "is_known_tag",
    "locate",
    "lookup",
    "normalize_tag",
    "suggest",
    "tags_for_country",
]

#: Month of the provider region lists this table reflects.
SNAPSHOT = "2025-11"

_EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG)


@dataclass(frozen=True, slots=True)
class Region:
    """One cloud region as the library sees it."""

    provider: str  # "aws" | "gcp" | "azure" | "oci"
    code: str  # the provider's region code: "eu-central-1", "europe-west3", "germanywestcentral"
    name: str  # human name of the location: "Frankfurt"
    country: str  # ISO 3166-1 alpha-2, upper case: "DE"
    lat: float
    lon: float
    tags: frozenset[str]  # residency tags: {country} | every bloc containing it
    sovereign: bool = False  # isolated partition (GovCloud, China, government/sovereign realms)


# ---------------------------------------------------------------------------
# Countries: every ISO 3166-1 alpha-2 code (249), with the coordinates of a
# representative point -- the capital (seat of government where it differs), or
# the main town for territories. Used to locate a user given only a country.
# ---------------------------------------------------------------------------

COUNTRIES: dict[str, tuple[str, float, float]] = {
    "AD": ("Andorra", 42.51, 1.52),
    "AE": ("United Arab Emirates", 24.45, 54.38),
    "AF": ("Afghanistan", 34.53, 69.17),
    "AG": ("Antigua and Barbuda", 17.12, -61.85),
    "AI": ("Anguilla", 18.22, -63.05),
    "AL": ("Albania", 41.33, 19.82),
    "AM": ("Armenia", 40.18, 44.51),
    "AO": ("Angola", -8.84, 13.23),
    "AQ": ("Antarctica", -75.0, 0.0),
    "AR": ("Argentina", -34.60, -58.38),
    "AS": ("American Samoa", -14.28, -170.70),
    "AT": ("Austria", 48.21, 16.37),
    "AU": ("Australia", -35.28, 149.13),
    "AW": ("Aruba", 12.52, -70.03),
    "AX": ("Åland Islands", 60.10, 19.94),
    "AZ": ("Azerbaijan", 40.41, 49.87),
    "BA": ("Bosnia and Herzegovina", 43.86, 18.41),
    "BB": ("Barbados", 13.10, -59.62),
    "BD": ("Bangladesh", 23.81, 90.41),
    "BE": ("Belgium", 50.85, 4.35),
    "BF": ("Burkina Faso", 12.37, -1.52),
    "BG": ("Bulgaria", 42.70, 23.32),
    "BH": ("Bahrain", 26.23, 50.59),
    "BI": ("Burundi", -3.43, 29.93),
    "BJ": ("Benin", 6.50, 2.63),
    "BL": ("Saint Barthélemy", 17.90, -62.85),
    "BM": ("Bermuda", 32.29, -64.78),
    "BN": ("Brunei", 4.90, 114.94),
    "BO": ("Bolivia", -16.50, -68.15),
    "BQ": ("Caribbean Netherlands", 12.15, -68.27),
    "BR": ("Brazil", -15.79, -47.88),
    "BS": ("Bahamas", 25.05, -77.35),
    "BT": ("Bhutan", 27.47, 89.64),
    "BV": ("Bouvet Island", -54.42, 3.36),
    "BW": ("Botswana", -24.65, 25.91),
    "BY": ("Belarus", 53.90, 27.57),
    "BZ": ("Belize", 17.25, -88.77),
    "CA": ("Canada", 45.42, -75.70),
    "CC": ("Cocos (Keeling) Islands", -12.19, 96.83),
    "CD": ("DR Congo", -4.32, 15.31),
    "CF": ("Central African Republic", 4.39, 18.56),
    "CG": ("Republic of the Congo", -4.27, 15.28),
    "CH": ("Switzerland", 46.95, 7.45),
    "CI": ("Côte d'Ivoire", 6.83, -5.29),
    "CK": ("Cook Islands", -21.21, -159.78),
    "CL": ("Chile", -33.45, -70.67),
    "CM": ("Cameroon", 3.87, 11.52),
    "CN": ("China", 39.90, 116.41),
    "CO": ("Colombia", 4.71, -74.07),
    "CR": ("Costa Rica", 9.93, -84.08),
    "CU": ("Cuba", 23.11, -82.37),
    "CV": ("Cape Verde", 14.93, -23.51),
    "CW": ("Curaçao", 12.11, -68.93),
    "CX": ("Christmas Island", -10.42, 105.68),
    "CY": ("Cyprus", 35.17, 33.36),
    "CZ": ("Czechia", 50.08, 14.44),
    "DE": ("Germany", 52.52, 13.40),
    "DJ": ("Djibouti", 11.59, 43.15),
    "DK": ("Denmark", 55.68, 12.57),
    "DM": ("Dominica", 15.30, -61.39),
    "DO": ("Dominican Republic", 18.49, -69.93),
    "DZ": ("Algeria", 36.75, 3.06),
    "EC": ("Ecuador", -0.18, -78.47),
    "EE": ("Estonia", 59.44, 24.75),
    "EG": ("Egypt", 30.04, 31.24),
    "EH": ("Western Sahara", 27.15, -13.20),
    "ER": ("Eritrea", 15.32, 38.93),
    "ES": ("Spain", 40.42, -3.70),
    "ET": ("Ethiopia", 9.03, 38.74),
    "FI": ("Finland", 60.17, 24.94),
    "FJ": ("Fiji", -18.14, 178.44),
    "FK": ("Falkland Islands", -51.70, -57.85),
    "FM": ("Micronesia", 6.92, 158.16),
    "FO": ("Faroe Islands", 62.01, -6.77),
    "FR": ("France", 48.86, 2.35),
    "GA": ("Gabon", 0.42, 9.47),
    "GB": ("United Kingdom", 51.51, -0.13),
    "GD": ("Grenada", 12.06, -61.75),
    "GE": ("Georgia", 41.72, 44.79),
    "GF": ("French Guiana", 4.94, -52.33),
    "GG": ("Guernsey", 49.45, -2.54),
    "GH": ("Ghana", 5.60, -0.19),
    "GI": ("Gibraltar", 36.14, -5.35),
    "GL": ("Greenland", 64.18, -51.72),
    "GM": ("Gambia", 13.45, -16.58),
    "GN": ("Guinea", 9.64, -13.58),
    "GP": ("Guadeloupe", 15.99, -61.73),
    "GQ": ("Equatorial Guinea", 3.75, 8.78),
    "GR": ("Greece", 37.98, 23.73),
    "GS": ("South Georgia and the South Sandwich Islands", -54.28, -36.51),
    "GT": ("Guatemala", 14.63, -90.51),
    "GU": ("Guam", 13.48, 144.75),
    "GW": ("Guinea-Bissau", 11.86, -15.60),
    "GY": ("Guyana", 6.80, -58.16),
    "HK": ("Hong Kong", 22.32, 114.17),
    "HM": ("Heard Island and McDonald Islands", -53.08, 73.50),
    "HN": ("Honduras", 14.07, -87.19),
    "HR": ("Croatia", 45.81, 15.98),
    "HT": ("Haiti", 18.59, -72.31),
    "HU": ("Hungary", 47.50, 19.04),
    "ID": ("Indonesia", -6.21, 106.85),
    "IE": ("Ireland", 53.35, -6.26),
    "IL": ("Israel", 31.77, 35.21),
    "IM": ("Isle of Man", 54.15, -4.48),
    "IN": ("India", 28.61, 77.21),
    "IO": ("British Indian Ocean Territory", -7.31, 72.41),
    "IQ": ("Iraq", 33.31, 44.37),
    "IR": ("Iran", 35.69, 51.39),
    "IS": ("Iceland", 64.15, -21.94),
    "IT": ("Italy", 41.90, 12.50),
    "JE": ("Jersey", 49.19, -2.11),
    "JM": ("Jamaica", 18.02, -76.80),
    "JO": ("Jordan", 31.95, 35.93),
    "JP": ("Japan", 35.68, 139.69),
    "KE": ("Kenya", -1.29, 36.82),
    "KG": ("Kyrgyzstan", 42.87, 74.59),
    "KH": ("Cambodia", 11.56, 104.92),
    "KI": ("Kiribati", 1.33, 172.98),
    "KM": ("Comoros", -11.70, 43.26),
    "KN": ("Saint Kitts and Nevis", 17.30, -62.72),
    "KP": ("North Korea", 39.04, 125.76),
    "KR": ("South Korea", 37.57, 126.98),
    "KW": ("Kuwait", 29.38, 47.99),
    "KY": ("Cayman Islands", 19.29, -81.37),
    "KZ": ("Kazakhstan", 51.17, 71.45),
    "LA": ("Laos", 17.98, 102.63),
    "LB": ("Lebanon", 33.89, 35.50),
    "LC": ("Saint Lucia", 14.01, -60.99),
    "LI": ("Liechtenstein", 47.14, 9.52),
    "LK": ("Sri Lanka", 6.93, 79.85),
    "LR": ("Liberia", 6.30, -10.80),
    "LS": ("Lesotho", -29.31, 27.48),
    "LT": ("Lithuania", 54.69, 25.28),
    "LU": ("Luxembourg", 49.61, 6.13),
    "LV": ("Latvia", 56.95, 24.11),
    "LY": ("Libya", 32.89, 13.19),
    "MA": ("Morocco", 34.02, -6.83),
    "MC": ("Monaco", 43.74, 7.42),
    "MD": ("Moldova", 47.01, 28.86),
    "ME": ("Montenegro", 42.44, 19.26),
    "MF": ("Saint Martin", 18.07, -63.08),
    "MG": ("Madagascar", -18.88, 47.51),
    "MH": ("Marshall Islands", 7.09, 171.38),
    "MK": ("North Macedonia", 42.00, 21.43),
    "ML": ("Mali", 12.64, -8.00),
    "MM": ("Myanmar", 19.76, 96.08),
    "MN": ("Mongolia", 47.89, 106.91),
    "MO": ("Macao", 22.20, 113.54),
    "MP": ("Northern Mariana Islands", 15.21, 145.75),
    "MQ": ("Martinique", 14.60, -61.07),
    "MR": ("Mauritania", 18.08, -15.98),
    "MS": ("Montserrat", 16.79, -62.21),
    "MT": ("Malta", 35.90, 14.51),
    "MU": ("Mauritius", -20.16, 57.50),
    "MV": ("Maldives", 4.18, 73.51),
    "MW": ("Malawi", -13.96, 33.79),
    "MX": ("Mexico", 19.43, -99.13),
    "MY": ("Malaysia", 3.14, 101.69),
    "MZ": ("Mozambique", -25.97, 32.57),
    "NA": ("Namibia", -22.56, 17.08),
    "NC": ("New Caledonia", -22.28, 166.46),
    "NE": ("Niger", 13.51, 2.11),
    "NF": ("Norfolk Island", -29.05, 167.96),
    "NG": ("Nigeria", 9.08, 7.40),
    "NI": ("Nicaragua", 12.11, -86.24),
    "NL": ("Netherlands", 52.37, 4.90),
    "NO": ("Norway", 59.91, 10.75),
    "NP": ("Nepal", 27.72, 85.32),
    "NR": ("Nauru", -0.55, 166.92),
    "NU": ("Niue", -19.05, -169.92),
    "NZ": ("New Zealand", -41.29, 174.78),
    "OM": ("Oman", 23.59, 58.41),
    "PA": ("Panama", 8.98, -79.52),
    "PE": ("Peru", -12.05, -77.04),
    "PF": ("French Polynesia", -17.54, -149.57),
    "PG": ("Papua New Guinea", -9.44, 147.18),
    "PH": ("Philippines", 14.60, 120.98),
    "PK": ("Pakistan", 33.68, 73.05),
    "PL": ("Poland", 52.23, 21.01),
    "PM": ("Saint Pierre and Miquelon", 46.78, -56.18),
    "PN": ("Pitcairn Islands", -25.07, -130.10),
    "PR": ("Puerto Rico", 18.47, -66.11),
    "PS": ("Palestine", 31.90, 35.20),
    "PT": ("Portugal", 38.72, -9.14),
    "PW": ("Palau", 7.50, 134.62),
    "PY": ("Paraguay", -25.26, -57.58),
    "QA": ("Qatar", 25.29, 51.53),
    "RE": ("Réunion", -20.88, 55.45),
    "RO": ("Romania", 44.43, 26.10),
    "RS": ("Serbia", 44.79, 20.45),
    "RU": ("Russia", 55.76, 37.62),
    "RW": ("Rwanda", -1.94, 30.06),
    "SA": ("Saudi Arabia", 24.71, 46.68),
    "SB": ("Solomon Islands", -9.43, 159.95),
    "SC": ("Seychelles", -4.62, 55.45),
    "SD": ("Sudan", 15.50, 32.56),
    "SE": ("Sweden", 59.33, 18.07),
    "SG": ("Singapore", 1.35, 103.82),
    "SH": ("Saint Helena, Ascension and Tristan da Cunha", -15.93, -5.72),
    "SI": ("Slovenia", 46.06, 14.51),
    "SJ": ("Svalbard and Jan Mayen", 78.22, 15.65),
    "SK": ("Slovakia", 48.15, 17.11),
    "SL": ("Sierra Leone", 8.47, -13.23),
    "SM": ("San Marino", 43.94, 12.45),
    "SN": ("Senegal", 14.72, -17.47),
    "SO": ("Somalia", 2.05, 45.32),
    "SR": ("Suriname", 5.85, -55.20),
    "SS": ("South Sudan", 4.85, 31.58),
    "ST": ("São Tomé and Príncipe", 0.34, 6.73),
    "SV": ("El Salvador", 13.69, -89.22),
    "SX": ("Sint Maarten", 18.03, -63.05),
    "SY": ("Syria", 33.51, 36.29),
    "SZ": ("Eswatini", -26.31, 31.14),
    "TC": ("Turks and Caicos Islands", 21.46, -71.14),
    "TD": ("Chad", 12.13, 15.06),
    "TF": ("French Southern Territories", -49.35, 70.22),
    "TG": ("Togo", 6.13, 1.22),
    "TH": ("Thailand", 13.76, 100.50),
    "TJ": ("Tajikistan", 38.56, 68.77),
    "TK": ("Tokelau", -9.20, -171.85),
    "TL": ("Timor-Leste", -8.56, 125.56),
    "TM": ("Turkmenistan", 37.96, 58.33),
    "TN": ("Tunisia", 36.81, 10.18),
    "TO": ("Tonga", -21.14, -175.20),
    "TR": ("Türkiye", 39.93, 32.86),
    "TT": ("Trinidad and Tobago", 10.66, -61.51),
    "TV": ("Tuvalu", -8.52, 179.20),
    "TW": ("Taiwan", 25.03, 121.57),
    "TZ": ("Tanzania", -6.16, 35.75),
    "UA": ("Ukraine", 50.45, 30.52),
    "UG": ("Uganda", 0.35, 32.58),
    "UM": ("United States Minor Outlying Islands", 19.28, 166.65),
    "US": ("United States", 38.90, -77.04),
    "UY": ("Uruguay", -34.90, -56.16),
    "UZ": ("Uzbekistan", 41.30, 69.24),
    "VA": ("Vatican City", 41.90, 12.45),
    "VC": ("Saint Vincent and the Grenadines", 13.16, -61.22),
    "VE": ("Venezuela", 10.48, -66.90),
    "VG": ("British Virgin Islands", 18.43, -64.62),
    "VI": ("United States Virgin Islands", 18.34, -64.93),
    "VN": ("Vietnam", 21.03, 105.85),
    "VU": ("Vanuatu", -17.73, 168.32),
    "WF": ("Wallis and Futuna", -13.28, -176.17),
    "WS": ("Samoa", -13.83, -171.76),
    "YE": ("Yemen", 15.37, 44.19),
    "YT": ("Mayotte", -12.78, 45.23),
    "ZA": ("South Africa", -25.75, 28.19),
    "ZM": ("Zambia", -15.39, 28.32),
    "ZW": ("Zimbabwe", -17.83, 31.05),
}


# ---------------------------------------------------------------------------
# Blocs: bloc name -> member countries.
#
# A bloc name is never an ISO country code: names that are also country codes
# (US, CA, CH, ...) are simply countries, and "ME" (which would read as "Middle
# East") is Montenegro -- use MENA. Overseas territories that have their own ISO
# code are not counted as members of their sovereign's political blocs (EU has
# exactly its 27 member states); they do belong to the continental groupings.
# ---------------------------------------------------------------------------


def _codes(text: str) -> frozenset[str]:
    """Country codes written as one space-separated string (keeps the bloc tables compact)."""
    return frozenset(text.split())


# European Union: the 27 member states (since the UK left on 2020-01-31).
_EU = _codes("AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK")
# European Free Trade Association: Iceland, Liechtenstein, Norway, Switzerland.
_EFTA = _codes("CH IS LI NO")
# Continental groupings follow the UN M49 standard regions; together EMEA, APAC and
# AMER cover every ISO country exactly once, except Antarctica (AQ), which has none.
# Europe (UN M49 Northern, Western, Eastern and Southern Europe).
_EUROPE = _codes(
    "AX DK EE FI FO GB GG IE IM IS JE LT LV NO SE SJ "
    "AT BE CH DE FR LI LU MC NL "
    "BG BY CZ HU MD PL RO RU SK UA "
    "AD AL BA ES GI GR HR IT ME MK MT PT RS SI SM VA"
)
# Africa (UN M49 Northern, Eastern, Middle, Southern and Western Africa, incl. IO and TF).
_AFRICA = _codes(
    "DZ EG EH LY MA SD TN "
    "BI DJ ER ET IO KE KM MG MU MW MZ RE RW SC SO SS TF TZ UG YT ZM ZW "
    "AO CD CF CG CM GA GQ ST TD "
    "BW LS NA SZ ZA "
    "BF BJ CI CV GH GM GN GW LR ML MR NE NG SH SL SN TG"
)
# Western Asia (UN M49: the Middle East and the Caucasus) and Central Asia.
_WESTERN_ASIA = _codes("AE AM AZ BH CY GE IL IQ JO KW LB OM PS QA SA SY TR YE")
_CENTRAL_ASIA = _codes("KG KZ TJ TM UZ")
# Americas (UN M49 Northern America, Caribbean, Central America and South America).
_NORTHERN_AMERICA = _codes("BM CA GL PM US")
_LATIN_AMERICA = _codes(
    "AG AI AW BB BL BQ BS CU CW DM DO GD GP HT JM KN KY LC MF MQ MS PR SX TC TT VC VG VI "
    "BZ CR GT HN MX NI PA SV "
    "AR BO BR BV CL CO EC FK GF GS GY PE PY SR UY VE"
)
_AMER = _NORTHERN_AMERICA | _LATIN_AMERICA
# Asia-Pacific: UN M49 Eastern, South-eastern and Southern Asia (Iran excepted: it
# is counted in EMEA with the rest of the Middle East) plus Oceania.
_APAC = _codes(
    "CN HK JP KP KR MN MO TW "
    "BN ID KH LA MM MY PH SG TH TL VN "
    "AF BD BT IN LK MV NP PK "
    "AU CC CX HM NF NZ FJ NC PG SB VU FM GU KI MH MP NR PW UM AS CK NU PF PN TK TO TV WF WS"
)

BLOCS: dict[str, frozenset[str]] = {
    # European Union: the 27 member states.
    "EU": _EU,
    # European Economic Area: the EU plus Iceland, Liechtenstein and Norway.
    "EEA": _EU | frozenset({"IS", "LI", "NO"}),
    # European Free Trade Association: Iceland, Liechtenstein, Norway, Switzerland.
    "EFTA": _EFTA,
    # The United Kingdom as a residency tag ("UK" is not an ISO code; the country is GB).
    # The Crown Dependencies (GG, JE, IM) are not part of the UK and are not included.
    "UK": frozenset({"GB"}),
    # Europe, Middle East and Africa: UN M49 Europe + Africa + Western Asia + Central
    # Asia, plus Iran.
    "EMEA": _EUROPE | _AFRICA | _WESTERN_ASIA | _CENTRAL_ASIA | frozenset({"IR"}),
    # Asia-Pacific: UN M49 Eastern, South-eastern and Southern Asia (minus Iran) + Oceania.
    "APAC": _APAC,
    # The Americas: UN M49 Northern America + Latin America and the Caribbean.
    "AMER": _AMER,
    # Same as AMER, under its other common spelling.
    "AMERICAS": _AMER,
    # Latin America and the Caribbean (UN M49): the Americas minus BM, CA, GL, PM, US.
    "LATAM": _LATIN_AMERICA,
    # Middle East and North Africa: the World Bank grouping, less Malta (an EU member).
    "MENA": _codes("AE BH DJ DZ EG IL IQ IR JO KW LB LY MA OM PS QA SA SY TN YE"),
    # Gulf Cooperation Council: Bahrain, Kuwait, Oman, Qatar, Saudi Arabia, UAE.
    "GCC": _codes("AE BH KW OM QA SA"),
    # Association of Southeast Asian Nations: 11 members (Timor-Leste joined in Oct 2025).
    "ASEAN": _codes("BN ID KH LA MM MY PH SG TH TL VN"),
    # Australia and New Zealand.
    "ANZ": frozenset({"AU", "NZ"}),
}


def _country_tags() -> dict[str, frozenset[str]]:
    by_country: dict[str, set[str]] = {code: {code} for code in COUNTRIES}
    for bloc, members in BLOCS.items():
        for member in members:
            by_country[member].add(bloc)
    return {code: frozenset(tags) for code, tags in by_country.items()}


_COUNTRY_TAGS: dict[str, frozenset[str]] = _country_tags()


# ---------------------------------------------------------------------------
# Regions: (code, name, country, lat, lon, sovereign), per provider. Coordinates
# are those of the city (or the metro area) the provider names for the region.
# ---------------------------------------------------------------------------

_Row = tuple[str, str, str, float, float, bool]

_AWS: tuple[_Row, ...] = (
    ("us-east-1", "N. Virginia", "US", 39.04, -77.49, False),
    ("us-east-2", "Ohio", "US", 39.96, -83.00, False),
    ("us-west-1", "N. California", "US", 37.34, -121.89, False),
    ("us-west-2", "Oregon", "US", 45.84, -119.70, False),
    ("af-south-1", "Cape Town", "ZA", -33.92, 18.42, False),
    ("ap-east-1", "Hong Kong", "HK", 22.32, 114.17, False),
    ("ap-east-2", "Taipei", "TW", 25.03, 121.57, False),
    ("ap-south-1", "Mumbai", "IN", 19.08, 72.88, False),
    ("ap-south-2", "Hyderabad", "IN", 17.39, 78.49, False),
    ("ap-southeast-1", "Singapore", "SG", 1.35, 103.82, False),
    ("ap-southeast-2", "Sydney", "AU", -33.87, 151.21, False),
    ("ap-southeast-3", "Jakarta", "ID", -6.21, 106.85, False),
    ("ap-southeast-4", "Melbourne", "AU", -37.81, 144.96, False),
    ("ap-southeast-5", "Malaysia (Kuala Lumpur)", "MY", 3.14, 101.69, False),
    ("ap-southeast-6", "New Zealand (Auckland)", "NZ", -36.85, 174.76, False),
    ("ap-southeast-7", "Thailand (Bangkok)", "TH", 13.76, 100.50, False),
    ("ap-northeast-1", "Tokyo", "JP", 35.68, 139.69, False),
    ("ap-northeast-2", "Seoul", "KR", 37.57, 126.98, False),
    ("ap-northeast-3", "Osaka", "JP", 34.69, 135.50, False),
    ("ca-central-1", "Canada Central (Montreal)", "CA", 45.50, -73.57, False),
    ("ca-west-1", "Calgary", "CA", 51.04, -114.07, False),
    ("eu-central-1", "Frankfurt", "DE", 50.11, 8.68, False),
    ("eu-central-2", "Zurich", "CH", 47.38, 8.54, False),
    ("eu-west-1", "Ireland (Dublin)", "IE", 53.35, -6.26, False),
    ("eu-west-2", "London", "GB", 51.51, -0.13, False),
    ("eu-west-3", "Paris", "FR", 48.86, 2.35, False),
    ("eu-south-1", "Milan", "IT", 45.46, 9.19, False),
    ("eu-south-2", "Spain (Aragón)", "ES", 41.65, -0.88, False),
    ("eu-north-1", "Stockholm", "SE", 59.33, 18.07, False),
    ("il-central-1", "Tel Aviv", "IL", 32.09, 34.78, False),
    ("me-south-1", "Bahrain", "BH", 26.07, 50.56, False),
    ("me-central-1", "UAE", "AE", 25.20, 55.27, False),
    ("mx-central-1", "Mexico (Querétaro)", "MX", 20.59, -100.39, False),
    ("sa-east-1", "São Paulo", "BR", -23.55, -46.63, False),
    # Sovereign partitions: aws-us-gov, aws-cn, aws-eusc (European Sovereign Cloud).
    ("us-gov-east-1", "GovCloud US-East (Ohio)", "US", 39.96, -83.00, True),
    ("us-gov-west-1", "GovCloud US-West (Oregon)", "US", 45.84, -119.70, True),
    ("cn-north-1", "Beijing", "CN", 39.90, 116.41, True),
    ("cn-northwest-1", "Ningxia", "CN", 37.51, 105.19, True),
    ("eusc-de-east-1", "European Sovereign Cloud (Brandenburg)", "DE", 52.41, 12.53, True),
)

_GCP: tuple[_Row, ...] = (
    ("us-central1", "Iowa (Council Bluffs)", "US", 41.26, -95.86, False),
    ("us-east1", "South Carolina (Moncks Corner)", "US", 33.20, -80.01, False),
    ("us-east4", "N. Virginia (Ashburn)", "US", 39.04, -77.49, False),
    ("us-east5", "Columbus", "US", 39.96, -83.00, False),
    ("us-south1", "Dallas", "US", 32.78, -96.80, False),
    ("us-west1", "Oregon (The Dalles)", "US", 45.59, -121.18, False),
    ("us-west2", "Los Angeles", "US", 34.05, -118.24, False),
    ("us-west3", "Salt Lake City", "US", 40.76, -111.89, False),
    ("us-west4", "Las Vegas", "US", 36.17, -115.14, False),
    ("northamerica-northeast1", "Montréal", "CA", 45.50, -73.57, False),
    ("northamerica-northeast2", "Toronto", "CA", 43.65, -79.38, False),
    ("northamerica-south1", "Querétaro", "MX", 20.59, -100.39, False),
    ("southamerica-east1", "São Paulo (Osasco)", "BR", -23.53, -46.79, False),
    ("southamerica-west1", "Santiago", "CL", -33.45, -70.67, False),
    ("europe-west1", "Belgium (St. Ghislain)", "BE", 50.45, 3.82, False),
    ("europe-west2", "London", "GB", 51.51, -0.13, False),
    ("europe-west3", "Frankfurt", "DE", 50.11, 8.68, False),
    ("europe-west4", "Netherlands (Eemshaven)", "NL", 53.45, 6.84, False),
    ("europe-west6", "Zurich", "CH", 47.38, 8.54, False),
    ("europe-west8", "Milan", "IT", 45.46, 9.19, False),
    ("europe-west9", "Paris", "FR", 48.86, 2.35, False),
    ("europe-west10", "Berlin", "DE", 52.52, 13.40, False),
    ("europe-west12", "Turin", "IT", 45.07, 7.69, False),
    ("europe-central2", "Warsaw", "PL", 52.23, 21.01, False),
    ("europe-north1", "Finland (Hamina)", "FI", 60.57, 27.20, False),
    ("europe-north2", "Stockholm", "SE", 59.33, 18.07, False),
    ("europe-southwest1", "Madrid", "ES", 40.42, -3.70, False),
    ("me-west1", "Tel Aviv", "IL", 32.09, 34.78, False),
    ("me-central1", "Doha", "QA", 25.29, 51.53, False),
    ("me-central2", "Dammam", "SA", 26.42, 50.09, False),
    ("africa-south1", "Johannesburg", "ZA", -26.20, 28.05, False),
    ("asia-east1", "Taiwan (Changhua County)", "TW", 24.05, 120.52, False),
    ("asia-east2", "Hong Kong", "HK", 22.32, 114.17, False),
    ("asia-northeast1", "Tokyo", "JP", 35.68, 139.69, False),
    ("asia-northeast2", "Osaka", "JP", 34.69, 135.50, False),
    ("asia-northeast3", "Seoul", "KR", 37.57, 126.98, False),
    ("asia-south1", "Mumbai", "IN", 19.08, 72.88, False),
    ("asia-south2", "Delhi", "IN", 28.61, 77.21, False),
    ("asia-southeast1", "Singapore (Jurong West)", "SG", 1.34, 103.71, False),
    ("asia-southeast2", "Jakarta", "ID", -6.21, 106.85, False),
    ("asia-southeast3", "Bangkok", "TH", 13.76, 100.50, False),
    ("australia-southeast1", "Sydney", "AU", -33.87, 151.21, False),
    ("australia-southeast2", "Melbourne", "AU", -37.81, 144.96, False),
)

# Azure: programmatic names (``az account list-locations``), including regions with
# restricted access (paired / in-country DR regions) and the two EUAP canary regions.
_AZURE: tuple[_Row, ...] = (
    ("eastus", "East US (Virginia)", "US", 37.37, -79.82, False),
    ("eastus2", "East US 2 (Virginia)", "US", 36.67, -78.39, False),
    ("centralus", "Central US (Iowa)", "US", 41.59, -93.62, False),
    ("northcentralus", "North Central US (Illinois)", "US", 41.88, -87.63, False),
    ("southcentralus", "South Central US (Texas)", "US", 29.42, -98.49, False),
    ("westcentralus", "West Central US (Wyoming)", "US", 41.14, -104.82, False),
    ("westus", "West US (California)", "US", 37.78, -122.42, False),
    ("westus2", "West US 2 (Washington)", "US", 47.23, -119.85, False),
    ("westus3", "West US 3 (Arizona)", "US", 33.45, -112.07, False),
    ("centraluseuap", "Central US EUAP (Iowa)", "US", 41.59, -93.62, False),
    ("eastus2euap", "East US 2 EUAP (Virginia)", "US", 36.67, -78.39, False),
    ("canadacentral", "Canada Central (Toronto)", "CA", 43.65, -79.38, False),
    ("canadaeast", "Canada East (Quebec City)", "CA", 46.81, -71.21, False),
    ("mexicocentral", "Mexico Central (Querétaro)", "MX", 20.59, -100.39, False),
    ("brazilsouth", "Brazil South (São Paulo)", "BR", -23.55, -46.63, False),
    ("brazilsoutheast", "Brazil Southeast (Rio de Janeiro)", "BR", -22.91, -43.17, False),
    ("chilecentral", "Chile Central (Santiago)", "CL", -33.45, -70.67, False),
    ("northeurope", "North Europe (Dublin)", "IE", 53.35, -6.26, False),
    ("westeurope", "West Europe (Amsterdam)", "NL", 52.37, 4.90, False),
    ("uksouth", "UK South (London)", "GB", 51.51, -0.13, False),
    ("ukwest", "UK West (Cardiff)", "GB", 51.48, -3.18, False),
    ("francecentral", "France Central (Paris)", "FR", 48.86, 2.35, False),
    ("francesouth", "France South (Marseille)", "FR", 43.30, 5.37, False),
    ("germanywestcentral", "Germany West Central (Frankfurt)", "DE", 50.11, 8.68, False),
    ("germanynorth", "Germany North (Berlin)", "DE", 52.52, 13.40, False),
    ("switzerlandnorth", "Switzerland North (Zurich)", "CH", 47.38, 8.54, False),
    ("switzerlandwest", "Switzerland West (Geneva)", "CH", 46.20, 6.14, False),
    ("norwayeast", "Norway East (Oslo)", "NO", 59.91, 10.75, False),
    ("norwaywest", "Norway West (Stavanger)", "NO", 58.97, 5.73, False),
    ("swedencentral", "Sweden Central (Gävle)", "SE", 60.67, 17.14, False),
    ("swedensouth", "Sweden South (Malmö)", "SE", 55.60, 13.00, False),
    ("denmarkeast", "Denmark East (Copenhagen)", "DK", 55.68, 12.57, False),
    ("polandcentral", "Poland Central (Warsaw)", "PL", 52.23, 21.01, False),
    ("italynorth", "Italy North (Milan)", "IT", 45.46, 9.19, False),
    ("spaincentral", "Spain Central (Madrid)", "ES", 40.42, -3.70, False),
    ("austriaeast", "Austria East (Vienna)", "AT", 48.21, 16.37, False),
    ("belgiumcentral", "Belgium Central (Brussels)", "BE", 50.85, 4.35, False),
    ("uaenorth", "UAE North (Dubai)", "AE", 25.20, 55.27, False),
    ("uaecentral", "UAE Central (Abu Dhabi)", "AE", 24.45, 54.38, False),
    ("qatarcentral", "Qatar Central (Doha)", "QA", 25.29, 51.53, False),
    ("israelcentral", "Israel Central", "IL", 32.09, 34.78, False),
    ("israelnorthwest", "Israel Northwest", "IL", 32.79, 34.99, False),
    ("southafricanorth", "South Africa North (Johannesburg)", "ZA", -26.20, 28.05, False),
    ("southafricawest", "South Africa West (Cape Town)", "ZA", -33.92, 18.42, False),
    ("centralindia", "Central India (Pune)", "IN", 18.52, 73.86, False),
    ("southindia", "South India (Chennai)", "IN", 13.08, 80.27, False),
    ("westindia", "West India (Mumbai)", "IN", 19.08, 72.88, False),
    ("indiasouthcentral", "India South Central (Hyderabad)", "IN", 17.39, 78.49, False),
    ("jioindiawest", "Jio India West (Jamnagar)", "IN", 22.47, 70.06, False),
    ("jioindiacentral", "Jio India Central (Nagpur)", "IN", 21.15, 79.09, False),
    ("eastasia", "East Asia (Hong Kong)", "HK", 22.32, 114.17, False),
    ("southeastasia", "Southeast Asia (Singapore)", "SG", 1.35, 103.82, False),
    ("japaneast", "Japan East (Tokyo, Saitama)", "JP", 35.68, 139.77, False),
    ("japanwest", "Japan West (Osaka)", "JP", 34.69, 135.50, False),
    ("koreacentral", "Korea Central (Seoul)", "KR", 37.57, 126.98, False),
    ("koreasouth", "Korea South (Busan)", "KR", 35.18, 129.08, False),
    ("taiwannorth", "Taiwan North (Taipei)", "TW", 25.03, 121.57, False),
    ("taiwannorthwest", "Taiwan Northwest", "TW", 24.99, 121.30, False),
    ("indonesiacentral", "Indonesia Central (Jakarta)", "ID", -6.21, 106.85, False),
    ("malaysiawest", "Malaysia West (Kuala Lumpur)", "MY", 3.14, 101.69, False),
    ("malaysiasouth", "Malaysia South (Johor)", "MY", 1.49, 103.74, False),
    ("australiaeast", "Australia East (New South Wales)", "AU", -33.87, 151.21, False),
    ("australiasoutheast", "Australia Southeast (Victoria)", "AU", -37.81, 144.96, False),
    ("australiacentral", "Australia Central (Canberra)", "AU", -35.28, 149.13, False),
    ("australiacentral2", "Australia Central 2 (Canberra)", "AU", -35.31, 149.12, False),
    ("newzealandnorth", "New Zealand North (Auckland)", "NZ", -36.85, 174.76, False),
    # Sovereign clouds: Azure Government (incl. DoD), Azure China (21Vianet), and the
    # partner-operated sovereign clouds Bleu (France) and Delos (Germany).
    ("usgovvirginia", "US Gov Virginia", "US", 36.67, -78.39, True),
    ("usgovarizona", "US Gov Arizona", "US", 33.45, -112.07, True),
    ("usgovtexas", "US Gov Texas", "US", 29.42, -98.49, True),
    ("usdodcentral", "US DoD Central (Iowa)", "US", 41.59, -93.62, True),
    ("usdodeast", "US DoD East (Virginia)", "US", 36.67, -78.39, True),
    ("chinanorth", "China North (Beijing)", "CN", 39.90, 116.41, True),
    ("chinanorth2", "China North 2 (Beijing)", "CN", 39.90, 116.41, True),
    ("chinanorth3", "China North 3 (Hebei)", "CN", 39.90, 116.41, True),
    ("chinaeast", "China East (Shanghai)", "CN", 31.23, 121.47, True),
    ("chinaeast2", "China East 2 (Shanghai)", "CN", 31.23, 121.47, True),
    ("chinaeast3", "China East 3 (Shanghai)", "CN", 31.23, 121.47, True),
    ("bleufrancecentral", "Bleu France Central", "FR", 48.86, 2.35, True),
    ("bleufrancesouth", "Bleu France South", "FR", 43.30, 5.37, True),
    ("deloscloudgermanycentral", "Delos Cloud Germany Central", "DE", 50.11, 8.68, True),
    ("deloscloudgermanynorth", "Delos Cloud Germany North", "DE", 52.52, 13.40, True),
)

# OCI: the commercial realm (oc1) public regions, plus the government and sovereign
# realms that have public region identifiers. Dedicated (DCC) regions are omitted.
_OCI: tuple[_Row, ...] = (
    ("us-ashburn-1", "Ashburn", "US", 39.04, -77.49, False),
    ("us-phoenix-1", "Phoenix", "US", 33.45, -112.07, False),
    ("us-sanjose-1", "San Jose", "US", 37.34, -121.89, False),
    ("us-chicago-1", "Chicago", "US", 41.88, -87.63, False),
    ("ca-toronto-1", "Toronto", "CA", 43.65, -79.38, False),
    ("ca-montreal-1", "Montreal", "CA", 45.50, -73.57, False),
    ("mx-queretaro-1", "Querétaro", "MX", 20.59, -100.39, False),
    ("mx-monterrey-1", "Monterrey", "MX", 25.69, -100.32, False),
    ("sa-saopaulo-1", "São Paulo", "BR", -23.55, -46.63, False),
    ("sa-vinhedo-1", "Vinhedo", "BR", -23.03, -46.98, False),
    ("sa-santiago-1", "Santiago", "CL", -33.45, -70.67, False),
    ("sa-valparaiso-1", "Valparaíso", "CL", -33.05, -71.62, False),
    ("sa-bogota-1", "Bogotá", "CO", 4.71, -74.07, False),
    ("uk-london-1", "London", "GB", 51.51, -0.13, False),
    ("uk-cardiff-1", "Newport", "GB", 51.59, -2.99, False),
    ("eu-frankfurt-1", "Frankfurt", "DE", 50.11, 8.68, False),
    ("eu-amsterdam-1", "Amsterdam", "NL", 52.37, 4.90, False),
    ("eu-zurich-1", "Zurich", "CH", 47.38, 8.54, False),
    ("eu-paris-1", "Paris", "FR", 48.86, 2.35, False),
    ("eu-marseille-1", "Marseille", "FR", 43.30, 5.37, False),
    ("eu-milan-1", "Milan", "IT", 45.46, 9.19, False),
    ("eu-madrid-1", "Madrid", "ES", 40.42, -3.70, False),
    ("eu-stockholm-1", "Stockholm", "SE", 59.33, 18.07, False),
    ("me-jeddah-1", "Jeddah", "SA", 21.49, 39.19, False),
    ("me-riyadh-1", "Riyadh", "SA", 24.71, 46.68, False),
    ("me-dubai-1", "Dubai", "AE", 25.20, 55.27, False),
    ("me-abudhabi-1", "Abu Dhabi", "AE", 24.45, 54.38, False),
    ("il-jerusalem-1", "Jerusalem", "IL", 31.77, 35.21, False),
    ("af-johannesburg-1", "Johannesburg", "ZA", -26.20, 28.05, False),
    ("ap-mumbai-1", "Mumbai", "IN", 19.08, 72.88, False),
    ("ap-hyderabad-1", "Hyderabad", "IN", 17.39, 78.49, False),
    ("ap-singapore-1", "Singapore", "SG", 1.35, 103.82, False),
    ("ap-singapore-2", "Singapore West", "SG", 1.34, 103.71, False),
    ("ap-tokyo-1", "Tokyo", "JP", 35.68, 139.69, False),
    ("ap-osaka-1", "Osaka", "JP", 34.69, 135.50, False),
    ("ap-seoul-1", "Seoul", "KR", 37.57, 126.98, False),
    ("ap-chuncheon-1", "Chuncheon", "KR", 37.88, 127.73, False),
    ("ap-sydney-1", "Sydney", "AU", -33.87, 151.21, False),
    ("ap-melbourne-1", "Melbourne", "AU", -37.81, 144.96, False),
    # Sovereign realms: EU Sovereign Cloud (oc19), Serbia (oc20), US Government and
    # Defense (oc2, oc3), UK Government (oc4).
    ("eu-frankfurt-2", "EU Sovereign Frankfurt", "DE", 50.11, 8.68, True),
    ("eu-madrid-2", "EU Sovereign Madrid", "ES", 40.42, -3.70, True),
    ("eu-jovanovac-1", "Serbia Central (Jovanovac)", "RS", 44.01, 20.91, True),
    ("us-langley-1", "US DoD East (Langley)", "US", 38.93, -77.18, True),
    ("us-luke-1", "US DoD West (Luke)", "US", 33.54, -112.38, True),
    ("us-gov-ashburn-1", "US Gov East (Ashburn)", "US", 39.04, -77.49, True),
    ("us-gov-chicago-1", "US Gov Central (Chicago)", "US", 41.88, -87.63, True),
    ("us-gov-phoenix-1", "US Gov West (Phoenix)", "US", 33.45, -112.07, True),
    ("uk-gov-london-1", "UK Gov South (London)", "GB", 51.51, -0.13, True),
    ("uk-gov-cardiff-1", "UK Gov West (Cardiff)", "GB", 51.48, -3.18, True),
)

_TABLES: dict[str, tuple[_Row, ...]] = {"aws": _AWS, "gcp": _GCP, "azure": _AZURE, "oci": _OCI}

PROVIDERS: frozenset[str] = frozenset(_TABLES)


def _build() -> tuple[
    tuple[Region, ...], dict[tuple[str, str], Region], dict[str, tuple[Region, ...]], dict[str, list[str]]
]:
    regions: list[Region] = []
    by_key: dict[tuple[str, str], Region] = {}
    by_code: dict[str, list[Region]] = {}
    codes: dict[str, list[str]] = {}
    for provider, rows in _TABLES.items():
        codes[provider] = []
        for code, name, country, lat, lon, sovereign in rows:
            region = Region(provider, code, name, country, lat, lon, _COUNTRY_TAGS[country], sovereign)
            regions.append(region)
            by_key[(provider, code)] = region
            by_code.setdefault(code, []).append(region)
            codes[provider].append(code)
    return (
        tuple(regions),
        by_key,
        {code: tuple(found) for code, found in by_code.items()},
        codes,
    )


_REGIONS, _BY_KEY, _BY_CODE, _CODES = _build()
_ALL_CODES: list[str] = list(_BY_CODE)


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


def lookup(provider: str, code: str) -> Region | None:
    """The region ``code`` of ``provider`` (both case-insensitive), or ``None`` if not in the table."""
    return _BY_KEY.get((provider.strip().lower(), code.strip().lower()))


def find_code(code: str) -> list[Region]:
    """Every region, in any provider, whose code is ``code`` (case-insensitive)."""
    return list(_BY_CODE.get(code.strip().lower(), ()))


def suggest(provider: str, code: str, n: int = 3) -> list[str]:
    """Up to ``n`` known region codes for a region ``code`` that is not in the table, for
    "did you mean" error messages.

    By geography first: when ``code`` names a place — another provider's region code
    (``eu-frankfurt-1`` for aws), a city or country in a region's name (``frankfurt``,
    ``germany``), a country code or ``lat,lon`` — the nearest regions of ``provider``
    come first (sovereign partitions only when nothing else is near). Then by
    spelling. Searches ``provider``'s codes when the provider has a table, every
    provider's otherwise (and then by spelling only).
    """
    import difflib  # only needed on the error path; keeps module import cheap

    if n <= 0:
        return []
    key = provider.strip().lower()
    candidates = _CODES.get(key, _ALL_CODES)
    out: list[str] = []
    place = _place_of(code) if key in _CODES else None
    if place is not None:
        mine = [r for r in _REGIONS if r.provider == key]
        mine.sort(key=lambda r: (r.sovereign, round(distance_km(place, (r.lat, r.lon)) / 50.0)))
        out = [r.code for r in mine[:n]]
    for c in difflib.get_close_matches(code.strip().lower(), candidates, n=n, cutoff=0.6):
        if c not in out:
            out.append(c)
    return out[:n]


#: Words of region names that name no place.
_VAGUE = frozenset(
    {
        *("north", "south", "east", "west", "central", "northeast", "northwest", "southeast", "southwest"),
        *("midwest", "europe", "asia", "pacific", "america", "americas", "africa", "middle", "gov"),
        *("government", "cloud", "region", "sovereign", "secret", "top", "euap"),
    }
)


def _words(text: str) -> set[str]:
    import unicodedata

    flat = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    parts = [w for w in "".join(ch if ch.isalpha() else " " for ch in flat).split() if len(w) >= 4]
    return {w for w in parts if w not in _VAGUE}


def _place_of(text: str) -> tuple[float, float] | None:
    """Where a mistyped region ``text`` points: a region code of any provider, a city or
    country named in a region's name, a country code, ``lat,lon``; else None."""
    where = locate(text)
    if where is not None:
        return where
    words = _words(text)
    if not words:
        return None
    for region in _REGIONS:
        if words & _words(region.name):
            return region.lat, region.lon
    for name, lat, lon in COUNTRIES.values():
        if words & _words(name):
            return lat, lon
    return None


def all_regions() -> tuple[Region, ...]:
    """Every region in the table, grouped by provider."""
    return _REGIONS


def _unknown_tag_hint(tag: str) -> str:
    if tag == "UK":
        return "; the ISO code of the United Kingdom is 'GB' ('UK' is a bloc tag)"
    if tag in BLOCS:
        return f"; {tag!r} is a bloc, not a country"
    return ""


def tags_for_country(country: str) -> frozenset[str]:
    """Residency tags of a country: the country itself plus every bloc that contains it.

    Raises ``ValueError`` for anything that is not an ISO 3166-1 alpha-2 code.
    """
    key = country.strip().upper()
    tags = _COUNTRY_TAGS.get(key)
    if tags is None:
        raise ValueError(
            f"unknown country {country!r}: expected an ISO 3166-1 alpha-2 code such as 'DE'" + _unknown_tag_hint(key)
        )
    return tags


def is_known_tag(tag: str) -> bool:
    """Whether ``tag`` is an ISO country code or a bloc name (case-insensitive; canonical is upper case)."""
    key = tag.strip().upper()
    return key in COUNTRIES or key in BLOCS


def normalize_tag(tag: str) -> str:
    """The canonical (upper-case) form of a residency tag; ``ValueError`` if it is not known."""
    key = tag.strip().upper()
    if key in COUNTRIES or key in BLOCS:
        return key
    raise ValueError(
        f"unknown residency tag {tag!r}: expected an ISO 3166-1 alpha-2 country code "
        f"or one of the blocs {', '.join(sorted(BLOCS))}"
    )


def expand_tag(tag: str) -> frozenset[str]:
    """The countries a tag covers: a country -> ``{itself}``, a bloc -> its members.

    Raises ``ValueError`` for an unknown tag.
    """
    key = normalize_tag(tag)
    members = BLOCS.get(key)
    return members if members is not None else frozenset({key})


def _parse_lat_lon(text: str) -> tuple[float, float] | None:
    parts = text.split(",")
    if len(parts) != 2:
        return None
    try:
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return lat, lon


def locate(place: str) -> tuple[float, float] | None:
    """Coordinates ``(lat, lon)`` of a user's location, or ``None`` if it cannot be resolved.

    ``place`` may be a region code of any provider (``"eu-west-1"``, ``"europe-west4"``,
    ``"westeurope"``), ``"provider:code"`` (``"azure:westeurope"``), an ISO country code
    (``"DE"``, case-insensitive), or explicit ``"lat,lon"`` degrees (``"52.52,13.40"``).
    """
    text = place.strip()
    if not text:
        return None
    if ":" in text:
        provider, _, code = text.partition(":")
        region = lookup(provider, code)
        return (region.lat, region.lon) if region is not None else None
    found = _BY_CODE.get(text.lower())
    if found:
        return found[0].lat, found[0].lon
    country = COUNTRIES.get(text.upper())
    if country is not None:
        return country[1], country[2]
    return _parse_lat_lon(text)


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle (haversine) distance in kilometres between two ``(lat, lon)`` points in degrees."""
    lat1, lon1 = math.radians(a[0]), math.radians(a[1])
    lat2, lon2 = math.radians(b[0]), math.radians(b[1])
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))
