from course_tools.assets import data_assets, registry
from course_tools.cli import main as course


def test_course_info_lists_every_registered_asset_with_its_state(capsys):
    assert course(["info", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    for asset in registry():
        assert f"] {asset.name}" in out


def test_the_smoke_fetch_leaves_out_what_only_the_full_profile_needs():
    smoke = {a.name for a in data_assets("smoke")}
    full = {a.name for a in data_assets("full")}
    assert "SMS Spam Collection" in smoke and "CoLA 1.1" in smoke
    assert smoke < full and any("roberta-base" in name for name in full - smoke)


def test_every_asset_but_the_shipped_tokenizer_can_be_fetched():
    assert [a.name for a in registry() if a.fetch is None] == ["GPT-2 tokenizer (shipped in course_lib)"]
