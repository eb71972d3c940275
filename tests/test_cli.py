from course_tools.cli import main as course


def test_info_names_profile_versions_and_assets(capsys):
    assert course(["info", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    for text in ("profile:  smoke", "torch:", "tiktoken:", "GPT-2 tokenizer (shipped in course_lib)",
                 "gpt2-small (124M) weights", "SMS Spam Collection"):
        assert text in out


def test_fetch_downloads_and_verifies_everything_from_the_mirror(tmp_path, monkeypatch, capsys, no_network, mirror):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    assert course(["fetch", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "SMS Spam Collection: ok" in out and "CoLA 1.1: ok" in out
    assert (tmp_path / "cola" / "cola_public_1.1.zip").is_file()


def test_fetch_of_real_gpt2_offline_fails_with_one_clear_line(tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    assert course(["fetch", "--model-size", "gpt2-small (124M)"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Could not download") and err.count("\n") == 1
