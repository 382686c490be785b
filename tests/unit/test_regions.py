"""Tests for llm_multicloud.regions: the region table and the residency vocabulary."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

_REGIONS_FILE = Path(__file__).resolve().parents[2] / "llm_multicloud" / "regions.py"


def _load_regions() -> ModuleType:
    try:
        from llm_multicloud import regions as module
    except Exception:  # the package __init__ may be mid-edit elsewhere: load the file itself
        spec = importlib.util.spec_from_file_location("_llm_multicloud_regions", _REGIONS_FILE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses needs the module registered
        spec.loader.exec_module(module)
    return module


regions = _load_regions()
Region = regions.Region


# --------------------------------------------------------------------------- known regions


@pytest.mark.parametrize(
    ("provider", "code", "country", "blocs"),
    [
        # AWS
        ("aws", "us-east-1", "US", {"AMER", "AMERICAS"}),
        ("aws", "eu-central-1", "DE", {"EU", "EEA", "EMEA"}),
        ("aws", "eu-central-2", "CH", {"EFTA", "EMEA"}),
        ("aws", "eu-west-1", "IE", {"EU", "EEA", "EMEA"}),
        ("aws", "eu-west-2", "GB", {"UK", "EMEA"}),
        ("aws", "eu-south-2", "ES", {"EU", "EEA", "EMEA"}),
        ("aws", "me-south-1", "BH", {"GCC", "MENA", "EMEA"}),
        ("aws", "me-central-1", "AE", {"GCC", "MENA", "EMEA"}),
        ("aws", "il-central-1", "IL", {"MENA", "EMEA"}),
        ("aws", "ap-east-1", "HK", {"APAC"}),
        ("aws", "ap-east-2", "TW", {"APAC"}),
        ("aws", "ap-southeast-2", "AU", {"ANZ", "APAC"}),
        ("aws", "ap-southeast-5", "MY", {"ASEAN", "APAC"}),
        ("aws", "ap-southeast-6", "NZ", {"ANZ", "APAC"}),
        ("aws", "mx-central-1", "MX", {"LATAM", "AMER", "AMERICAS"}),
        ("aws", "sa-east-1", "BR", {"LATAM", "AMER", "AMERICAS"}),
        ("aws", "af-south-1", "ZA", {"EMEA"}),
        ("aws", "ca-west-1", "CA", {"AMER", "AMERICAS"}),
        # GCP
        ("gcp", "europe-west2", "GB", {"UK", "EMEA"}),
        ("gcp", "europe-west4", "NL", {"EU", "EEA", "EMEA"}),
        ("gcp", "europe-west6", "CH", {"EFTA", "EMEA"}),
        ("gcp", "europe-west12", "IT", {"EU", "EEA", "EMEA"}),
        ("gcp", "europe-north2", "SE", {"EU", "EEA", "EMEA"}),
        ("gcp", "me-central1", "QA", {"GCC", "MENA", "EMEA"}),
        ("gcp", "me-central2", "SA", {"GCC", "MENA", "EMEA"}),
        ("gcp", "me-west1", "IL", {"MENA", "EMEA"}),
        ("gcp", "asia-east1", "TW", {"APAC"}),
        ("gcp", "asia-southeast1", "SG", {"ASEAN", "APAC"}),
        ("gcp", "northamerica-south1", "MX", {"LATAM", "AMER", "AMERICAS"}),
        ("gcp", "southamerica-west1", "CL", {"LATAM", "AMER", "AMERICAS"}),
        ("gcp", "us-central1", "US", {"AMER", "AMERICAS"}),
        # Azure
        ("azure", "westeurope", "NL", {"EU", "EEA", "EMEA"}),
        ("azure", "northeurope", "IE", {"EU", "EEA", "EMEA"}),
        ("azure", "germanywestcentral", "DE", {"EU", "EEA", "EMEA"}),
        ("azure", "uksouth", "GB", {"UK", "EMEA"}),
        ("azure", "norwayeast", "NO", {"EEA", "EFTA", "EMEA"}),
        ("azure", "switzerlandnorth", "CH", {"EFTA", "EMEA"}),
        ("azure", "eastasia", "HK", {"APAC"}),
        ("azure", "southeastasia", "SG", {"ASEAN", "APAC"}),
        ("azure", "qatarcentral", "QA", {"GCC", "MENA", "EMEA"}),
        ("azure", "uaenorth", "AE", {"GCC", "MENA", "EMEA"}),
        ("azure", "newzealandnorth", "NZ", {"ANZ", "APAC"}),
        ("azure", "brazilsouth", "BR", {"LATAM", "AMER", "AMERICAS"}),
        ("azure", "austriaeast", "AT", {"EU", "EEA", "EMEA"}),
        ("azure", "eastus", "US", {"AMER", "AMERICAS"}),
        # OCI
        ("oci", "eu-frankfurt-1", "DE", {"EU", "EEA", "EMEA"}),
        ("oci", "uk-london-1", "GB", {"UK", "EMEA"}),
        ("oci", "me-jeddah-1", "SA", {"GCC", "MENA", "EMEA"}),
        ("oci", "ap-tokyo-1", "JP", {"APAC"}),
    ],
)
def test_known_region_country_and_tags(provider: str, code: str, country: str, blocs: set[str]) -> None:
    region = regions.lookup(provider, code)
    assert region is not None, f"{provider}:{code} missing from the table"
    assert region.provider == provider
    assert region.code == code
    assert region.country == country
    assert region.tags == frozenset({country} | blocs)


def test_tricky_countries_not_in_the_eu() -> None:
    for provider, code in [("aws", "eu-west-2"), ("gcp", "europe-west2"), ("azure", "ukwest")]:
        region = regions.lookup(provider, code)
        assert region is not None
        assert "EU" not in region.tags and "EEA" not in region.tags
    for provider, code in [("aws", "eu-central-2"), ("gcp", "europe-west6"), ("azure", "switzerlandwest")]:
        region = regions.lookup(provider, code)
        assert region is not None
        assert region.country == "CH"
        assert "EU" not in region.tags and "EEA" not in region.tags


@pytest.mark.parametrize(
    ("provider", "code"),
    [
        ("aws", "us-gov-east-1"),
        ("aws", "us-gov-west-1"),
        ("aws", "cn-north-1"),
        ("aws", "cn-northwest-1"),
        ("azure", "usgovvirginia"),
        ("azure", "usgovarizona"),
        ("azure", "chinanorth3"),
        ("oci", "us-gov-ashburn-1"),
    ],
)
def test_sovereign_regions_are_flagged(provider: str, code: str) -> None:
    region = regions.lookup(provider, code)
    assert region is not None
    assert region.sovereign is True


@pytest.mark.parametrize(
    ("provider", "code"),
    [("aws", "us-east-1"), ("aws", "eu-central-1"), ("gcp", "us-central1"), ("azure", "eastus")],
)
def test_commercial_regions_are_not_sovereign(provider: str, code: str) -> None:
    region = regions.lookup(provider, code)
    assert region is not None
    assert region.sovereign is False


def test_china_regions_are_in_china() -> None:
    for provider, code in [("aws", "cn-north-1"), ("aws", "cn-northwest-1"), ("azure", "chinaeast2")]:
        region = regions.lookup(provider, code)
        assert region is not None
        assert region.country == "CN"


# --------------------------------------------------------------------------- table invariants


def test_every_region_is_consistent() -> None:
    for region in regions.all_regions():
        assert region.provider in regions.PROVIDERS
        assert region.code == region.code.strip().lower() and region.code
        assert region.name
        assert region.country in regions.COUNTRIES, region
        assert region.tags == regions.tags_for_country(region.country), region
        assert region.country in region.tags
        assert all(tag == tag.upper() for tag in region.tags)
        assert -90.0 <= region.lat <= 90.0 and -180.0 <= region.lon <= 180.0, region


def test_no_duplicate_provider_code() -> None:
    keys = [(r.provider, r.code) for r in regions.all_regions()]
    assert len(keys) == len(set(keys))


def test_region_counts_per_provider() -> None:
    counts: dict[str, int] = {}
    for region in regions.all_regions():
        counts[region.provider] = counts.get(region.provider, 0) + 1
    assert counts["aws"] >= 30
    assert counts["gcp"] >= 40
    assert counts["azure"] >= 50
    assert set(counts) == set(regions.PROVIDERS)
    assert {"aws", "gcp", "azure"} <= regions.PROVIDERS


def test_required_codes_present() -> None:
    required = {
        "aws": [
            *(f"us-{d}-{i}" for d in ("east", "west") for i in (1, 2)),
            *(f"ap-southeast-{i}" for i in range(1, 8)),
            *(f"ap-northeast-{i}" for i in range(1, 4)),
            *(f"eu-west-{i}" for i in range(1, 4)),
            "af-south-1", "ap-east-1", "ap-east-2", "ap-south-1", "ap-south-2", "ca-central-1",
            "ca-west-1", "eu-central-1", "eu-central-2", "eu-south-1", "eu-south-2", "eu-north-1",
            "il-central-1", "me-south-1", "me-central-1", "mx-central-1", "sa-east-1",
            "us-gov-east-1", "us-gov-west-1", "cn-north-1", "cn-northwest-1",
        ],
        "gcp": [
            "us-central1", "us-east1", "us-east4", "us-east5", "us-south1",
            *(f"us-west{i}" for i in range(1, 5)),
            "northamerica-northeast1", "northamerica-northeast2", "northamerica-south1",
            "southamerica-east1", "southamerica-west1",
            *(f"europe-west{i}" for i in (1, 2, 3, 4, 6, 8, 9, 10, 12)),
            "europe-central2", "europe-north1", "europe-north2", "europe-southwest1",
            "me-west1", "me-central1", "me-central2", "africa-south1",
            "asia-east1", "asia-east2", "asia-northeast1", "asia-northeast2", "asia-northeast3",
            "asia-south1", "asia-south2", "asia-southeast1", "asia-southeast2",
            "australia-southeast1", "australia-southeast2",
        ],
        "azure": [
            "eastus", "eastus2", "westus", "westus2", "westus3", "centralus", "northcentralus",
            "southcentralus", "westcentralus", "canadacentral", "canadaeast", "brazilsouth",
            "northeurope", "westeurope", "uksouth", "ukwest", "francecentral", "germanywestcentral",
            "norwayeast", "swedencentral", "switzerlandnorth", "polandcentral", "italynorth",
            "spaincentral", "uaenorth", "qatarcentral", "israelcentral", "southafricanorth",
            "centralindia", "southindia", "westindia", "eastasia", "southeastasia", "japaneast",
            "japanwest", "koreacentral", "koreasouth", "australiaeast", "australiasoutheast",
            "australiacentral", "newzealandnorth", "mexicocentral", "indonesiacentral",
            "malaysiawest", "chilecentral", "austriaeast", "belgiumcentral", "usgovvirginia",
        ],
    }  # fmt: skip
    missing = [(p, c) for p, codes in required.items() for c in codes if regions.lookup(p, c) is None]
    assert missing == []


def test_all_regions_is_immutable_snapshot() -> None:
    assert isinstance(regions.all_regions(), tuple)
    region = regions.all_regions()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        region.country = "XX"


# --------------------------------------------------------------------------- countries and blocs


def test_countries_cover_iso_3166() -> None:
    assert len(regions.COUNTRIES) == 249
    for code, (name, lat, lon) in regions.COUNTRIES.items():
        assert len(code) == 2 and code.isalpha() and code.isupper()
        assert name
        assert -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0
    for code in ("DE", "GB", "US", "CH", "NO", "RS", "TW", "HK", "PS", "AX", "SS"):
        assert code in regions.COUNTRIES
    assert "UK" not in regions.COUNTRIES and "EU" not in regions.COUNTRIES


def test_eu_membership() -> None:
    eu = regions.BLOCS["EU"]
    assert len(eu) == 27
    assert {"DE", "FR", "IE", "HR", "CY", "MT", "SE"} <= eu
    assert "GB" not in eu and "NO" not in eu and "CH" not in eu


def test_eea_and_efta() -> None:
    assert regions.BLOCS["EEA"] == regions.BLOCS["EU"] | {"IS", "LI", "NO"}
    assert regions.BLOCS["EFTA"] == {"CH", "IS", "LI", "NO"}
    no = regions.tags_for_country("NO")
    assert {"NO", "EEA", "EFTA"} <= no and "EU" not in no
    ch = regions.tags_for_country("CH")
    assert "EFTA" in ch and "EEA" not in ch and "EU" not in ch


def test_country_tags_examples() -> None:
    assert regions.tags_for_country("GB") == {"GB", "UK", "EMEA"}
    assert regions.tags_for_country("US") == {"US", "AMER", "AMERICAS"}
    assert regions.tags_for_country("JP") == {"JP", "APAC"}
    assert regions.tags_for_country("de") == {"DE", "EU", "EEA", "EMEA"}
    assert regions.tags_for_country("SA") == {"SA", "GCC", "MENA", "EMEA"}
    assert regions.tags_for_country("AU") == {"AU", "ANZ", "APAC"}
    assert regions.tags_for_country("TL") == {"TL", "ASEAN", "APAC"}
    assert regions.tags_for_country("AQ") == {"AQ"}


def test_every_eu_country_carries_eu_and_eea() -> None:
    for country in regions.BLOCS["EU"]:
        assert {"EU", "EEA", "EMEA"} <= regions.tags_for_country(country)


def test_bloc_names_are_not_country_codes_and_members_are_countries() -> None:
    required = {"EU", "EEA", "EFTA", "UK", "APAC", "EMEA", "AMER", "LATAM", "MENA", "GCC", "ASEAN", "ANZ"}
    assert required <= set(regions.BLOCS)
    for bloc, members in regions.BLOCS.items():
        assert bloc == bloc.upper()
        assert bloc not in regions.COUNTRIES, f"bloc {bloc} collides with a country code"
        assert members, bloc
        assert members <= set(regions.COUNTRIES), (bloc, members - set(regions.COUNTRIES))
    assert regions.BLOCS["UK"] == {"GB"}
    assert regions.BLOCS["ANZ"] == {"AU", "NZ"}
    assert regions.BLOCS["GCC"] == {"AE", "BH", "KW", "OM", "QA", "SA"}
    assert regions.BLOCS["LATAM"] <= regions.BLOCS["AMER"]
    assert "US" not in regions.BLOCS["LATAM"] and "CA" not in regions.BLOCS["LATAM"]
    assert regions.BLOCS["GCC"] <= regions.BLOCS["MENA"]
    assert regions.BLOCS["ASEAN"] <= regions.BLOCS["APAC"]


def test_continental_blocs_partition_the_world() -> None:
    emea, apac, amer = (regions.BLOCS[b] for b in ("EMEA", "APAC", "AMER"))
    assert not (emea & apac) and not (emea & amer) and not (apac & amer)
    assert emea | apac | amer == set(regions.COUNTRIES) - {"AQ"}


def test_tags_for_unknown_country_raises_value_error() -> None:
    with pytest.raises(ValueError, match="ISO 3166-1"):
        regions.tags_for_country("XX")
    with pytest.raises(ValueError, match="GB"):
        regions.tags_for_country("UK")
    with pytest.raises(ValueError, match="bloc"):
        regions.tags_for_country("EU")


def test_is_known_tag() -> None:
    for tag in ("DE", "GB", "US", "CH", "EU", "EEA", "UK", "APAC", "eu", " de "):
        assert regions.is_known_tag(tag), tag
    for tag in ("XX", "EUROPA", "", "ME-EAST"):
        assert not regions.is_known_tag(tag), tag


def test_expand_tag() -> None:
    assert regions.expand_tag("DE") == {"DE"}
    assert regions.expand_tag("eu") == regions.BLOCS["EU"]
    assert regions.expand_tag("UK") == {"GB"}
    assert regions.expand_tag("CH") == {"CH"}
    with pytest.raises(ValueError):
        regions.expand_tag("NOPE")
    assert regions.normalize_tag(" eea ") == "EEA"


# --------------------------------------------------------------------------- lookups


def test_lookup_is_case_insensitive() -> None:
    region = regions.lookup("AWS", "EU-West-1")
    assert region is not None and region.code == "eu-west-1" and region.provider == "aws"
    assert regions.lookup("Azure", "WestEurope") is regions.lookup("azure", "westeurope")
    assert regions.lookup("aws", "europe-west4") is None  # a GCP code under the wrong provider
    assert regions.lookup("nope", "us-east-1") is None
    assert regions.lookup("aws", "us-east-99") is None


def test_find_code() -> None:
    found = regions.find_code("Europe-West4")
    assert [(r.provider, r.country) for r in found] == [("gcp", "NL")]
    assert regions.find_code("not-a-region") == []


def test_suggest() -> None:
    assert "eu-west-1" in regions.suggest("aws", "eu-wset-1")
    assert "westeurope" in regions.suggest("azure", "westeruope")
    assert "europe-west4" in regions.suggest("gcp", "europe-west-4")
    assert "us-east-1" in regions.suggest("unknown-provider", "us-eats-1")
    assert len(regions.suggest("aws", "eu-west-1", n=2)) <= 2
    assert regions.suggest("aws", "zzzzzzzz") == []


def test_locate() -> None:
    frankfurt = regions.locate("eu-central-1")
    assert frankfurt is not None
    assert frankfurt == pytest.approx((50.11, 8.68), abs=0.5)
    assert regions.locate("europe-west4") == pytest.approx((53.4, 6.8), abs=0.5)
    assert regions.locate("westeurope") == pytest.approx((52.37, 4.90), abs=0.5)
    assert regions.locate("azure:westeurope") == regions.locate("westeurope")
    assert regions.locate("GCP:Europe-West2") == pytest.approx((51.5, -0.13), abs=0.5)
    assert regions.locate("DE") == pytest.approx((52.52, 13.40), abs=0.5)
    assert regions.locate("jp") == pytest.approx((35.68, 139.69), abs=0.5)
    assert regions.locate("52.5,13.4") == (52.5, 13.4)
    for garbage in ("garbage", "", "  ", "aws:europe-west4", "nope:eu-west-1", "EU", "91,0", "1,2,3"):
        assert regions.locate(garbage) is None, garbage


def test_distance_km() -> None:
    fra, dub = regions.locate("eu-central-1"), regions.locate("eu-west-1")
    assert fra is not None and dub is not None
    assert 1000 <= regions.distance_km(fra, dub) <= 1150
    assert regions.distance_km(fra, dub) == pytest.approx(regions.distance_km(dub, fra))
    assert regions.distance_km(fra, fra) == 0.0
    assert regions.distance_km((0.0, 0.0), (0.0, 180.0)) == pytest.approx(20015, rel=0.001)
    nyc_london = regions.distance_km((40.71, -74.01), (51.51, -0.13))
    assert 5500 <= nyc_london <= 5620


# --------------------------------------------------------------------------- import hygiene


def test_module_imports_only_stdlib() -> None:
    code = (
        "import importlib.util, sys\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('r', {str(_REGIONS_FILE)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['r'] = m; spec.loader.exec_module(m)\n"
        "print('\\n'.join(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in out.stdout.split()} - {"r"}
    third_party = {name for name in loaded if name not in sys.stdlib_module_names}
    assert third_party == set()
    assert "difflib" not in loaded  # only imported lazily by suggest()
