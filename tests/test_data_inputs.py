"""Bad inputs: every malformed captions.csv (encodings, sizes, odd bytes, layout) and --data folder either loads
with a report or raises CatalogueError with one line that names the file and says what to do; never another
exception. Bad images and bad splits: tests/test_image_inputs.py, tests/test_data_splits.py."""
from pathlib import Path

import numpy as np
import pytest

from catalogue_kit import folder, one_line
from xmodal.data import CatalogueError, load_catalogue, open_catalogue, resolve_data
from xmodal.data.__main__ import main as data_cli
from xmodal.data.catalogue import MAX_CAPTION_CHARS


# --- captions.csv: encodings, sizes, odd bytes ---------------------------------------------------------

def test_latin1_rows_are_skipped_with_the_line_and_an_iconv_hint(tmp_path):
    root = folder(tmp_path, b"image,caption\nimages/0.jpg,Red Shirt\nimages/1.jpg,Caf\xe9 Cr\xe8me Top\n"
                            b"images/2.jpg,Blue Jeans\n")
    cat = load_catalogue(root)
    assert cat.captions == ["Red Shirt", "Blue Jeans"]
    rep = cat.report
    assert rep.total_rows == 3 and rep.skipped == {"not UTF-8 text": 1}
    assert rep.examples["not UTF-8 text"][0].startswith("line 3 (looks like latin-1?")
    assert "Café Crème" in rep.examples["not UTF-8 text"][0]
    assert "iconv -f latin1 -t utf-8" in rep.summary() and "captions.csv" in rep.advice["not UTF-8 text"]


def test_windows_1252_is_recognised(tmp_path):
    root = folder(tmp_path, b"image,caption\nimages/0.jpg,Men\x92s Shirt\nimages/1.jpg,Plain Shirt\n")
    rep = load_catalogue(root).report
    assert "Windows-1252" in rep.examples["not UTF-8 text"][0] and "iconv -f cp1252" in rep.summary()


def test_header_that_is_not_utf8_is_a_clear_error(tmp_path):
    root = folder(tmp_path, b"image,caption,colo\xfbr\nimages/0.jpg,Red Shirt,Red\n")
    with pytest.raises(CatalogueError, match="line 1: the header is not UTF-8") as err:
        load_catalogue(root)
    assert "iconv" in one_line(err)


def test_caption_over_the_csv_field_limit_is_skipped_and_the_rest_loads(tmp_path):
    huge = "word " * 40_000  # 200,000 characters: over Python's csv field limit (131,072)
    long_ok = ("A relaxed-fit shirt in soft cotton poplin with a collar, buttons down the front and a yoke at "
               "the back. Long sleeves with buttoned cuffs and a rounded hem. ") * 4  # ~600 characters
    too_long = "x" * (MAX_CAPTION_CHARS + 1)
    root = folder(tmp_path, f'image,caption\nimages/0.jpg,"{huge}"\nimages/1.jpg,"{long_ok}"\n'
                            f"images/2.jpg,{too_long}\nimages/3.jpg,Plain Shirt\n")
    cat = load_catalogue(root)
    assert cat.images == ["images/1.jpg", "images/3.jpg"] and len(cat.captions[0]) > 500
    assert cat.report.skipped == {"caption too long": 2}
    assert cat.report.examples["caption too long"][0] == "line 2 (199,999 characters)"  # trailing space stripped


def test_nul_bytes_skip_their_row(tmp_path):
    root = folder(tmp_path, b"image,caption\nimages/0.jpg,Red\x00Shirt\nimages/1.jpg,Blue Jeans\n")
    cat = load_catalogue(root)
    assert cat.captions == ["Blue Jeans"] and cat.report.skipped == {"NUL byte in row": 1}


def test_control_characters_in_captions_become_spaces(tmp_path):
    root = folder(tmp_path, "image,caption\nimages/0.jpg,Red\x1b[0m\x07 Shirt\u0085Cotton\n")
    assert load_catalogue(root).captions == ["Red [0m Shirt Cotton"]


def test_utf16_with_a_bom_loads_and_without_one_is_refused(tmp_path):
    text = "image,caption\nimages/0.jpg,Red Shirt\n"
    cat = load_catalogue(folder(tmp_path / "a", text.encode("utf-16")))
    assert cat.captions == ["Red Shirt"]
    with pytest.raises(CatalogueError, match="UTF-16") as err:
        load_catalogue(folder(tmp_path / "b", text.encode("utf-16-le")))
    assert "iconv -f utf-16le" in one_line(err)


# --- captions.csv: layout --------------------------------------------------------------------------------

@pytest.mark.parametrize("content, match", [
    (b"", "is empty"),
    (b"  \r\n\n", "is empty"),
    (b"image,caption\n", "has a header but no data rows"),
    (b"image,caption\r\n\r\n", "has a header but no data rows"),
])
def test_empty_and_header_only_csv_are_clear_errors(tmp_path, content, match):
    with pytest.raises(CatalogueError, match=match) as err:
        load_catalogue(folder(tmp_path, content))
    assert "captions.csv" in one_line(err)


def test_bom_crlf_and_spaces_around_header_names(tmp_path):
    root = folder(tmp_path, b"\xef\xbb\xbf Image , CAPTION ,  colour \r\nimages/0.jpg,Red Shirt,Red\r\n"
                            b"images/1.jpg , Blue Jeans , Blue\r\n")
    cat = load_catalogue(root)
    assert cat.captions == ["Red Shirt", "Blue Jeans"] and cat.attributes == {"colour": ["Red", "Blue"]}
    assert cat.images == ["images/0.jpg", "images/1.jpg"] and cat.lines == [2, 3]


def test_quoted_fields_with_commas_quotes_and_newlines(tmp_path):
    root = folder(tmp_path, 'image,caption,colour\nimages/0.jpg,"Red, White Shirt","Red"\n'
                            'images/1.jpg,"A ""relaxed"" shirt.\nSoft cotton,\r\nlong sleeves.",Blue\n'
                            "images/2.jpg,Green Top,Green\n")
    cat = load_catalogue(root)
    assert cat.captions == ["Red, White Shirt", 'A "relaxed" shirt. Soft cotton, long sleeves.', "Green Top"]
    assert cat.lines == [2, 3, 6]  # physical lines, where each record starts


def test_unclosed_quote_skips_one_row_and_the_rest_still_loads(tmp_path):
    root = folder(tmp_path, 'image,caption\nimages/0.jpg,Red Shirt\nimages/1.jpg,"Blue Jeans\n'
                            "images/2.jpg,Green Top\nimages/3.jpg,Black Cap\n")
    cat = load_catalogue(root)
    assert cat.captions == ["Red Shirt", "Green Top", "Black Cap"]
    assert cat.report.skipped == {"broken csv row (unbalanced quotes)": 1}
    assert cat.report.examples["broken csv row (unbalanced quotes)"][0].startswith("line 3")


def test_rows_with_fewer_or_more_fields_are_skipped(tmp_path):
    root = folder(tmp_path, "image,caption,colour\nimages/0.jpg,Red Shirt,Red\nimages/1.jpg,Blue\n"
                            "images/2.jpg,Green Top,Green,Extra\nimages/3.jpg,Black Cap,Black,,\n")
    cat = load_catalogue(root)
    assert cat.captions == ["Red Shirt", "Black Cap"]  # trailing empty fields are only padding
    assert cat.report.skipped == {"broken csv row (missing fields)": 1, "broken csv row (extra fields)": 1}
    assert cat.report.examples["broken csv row (missing fields)"] == ["line 3 (2 fields, header has 3)"]


def test_duplicate_column_names_are_refused(tmp_path):
    with pytest.raises(CatalogueError, match="columns 2 and 3 are both named 'caption'") as err:
        load_catalogue(folder(tmp_path, "image,caption,Caption\nimages/0.jpg,Red Shirt,Red\n"))
    assert "captions.csv" in one_line(err)


def test_unnamed_columns_are_ignored_with_a_note(tmp_path):
    root = folder(tmp_path, ",image,caption,\n0,images/0.jpg,Red Shirt,x\n1,images/1.jpg,Blue Jeans\n")
    cat = load_catalogue(root)
    assert cat.captions == ["Red Shirt", "Blue Jeans"] and cat.attributes == {}
    assert any("column 1 has no name" in n for n in cat.report.notes) and "note:" in cat.report.summary()


def test_semicolon_and_tab_separated_files_load(tmp_path):
    assert load_catalogue(folder(tmp_path / "a", "image;caption\nimages/0.jpg;Red, White Shirt\n")).captions == [
        "Red, White Shirt"]
    assert load_catalogue(folder(tmp_path / "b", "image\tcaption\nimages/0.jpg\tRed Shirt\n")).captions == [
        "Red Shirt"]


def test_excel_sep_line_is_honoured(tmp_path):
    cat = load_catalogue(folder(tmp_path, "sep=;\r\nimage;caption;colour\r\nimages/0.jpg;Red, White Shirt;Red\r\n"))
    assert cat.captions == ["Red, White Shirt"] and cat.attributes == {"colour": ["Red"]} and cat.lines == [3]


def test_missing_columns_name_what_was_found(tmp_path):
    with pytest.raises(CatalogueError, match=r"lacks column\(s\) \['caption'\]; found \['image', 'title'\]"):
        load_catalogue(folder(tmp_path / "a", "image,title\nimages/0.jpg,Red Shirt\n"))
    with pytest.raises(CatalogueError, match="one quoted field: remove the quotes"):
        load_catalogue(folder(tmp_path / "b", '"image,caption"\nimages/0.jpg,Red Shirt\n'))


def test_captions_csv_that_is_a_folder_or_unreadable(tmp_path, monkeypatch):
    (tmp_path / "a" / "captions.csv").mkdir(parents=True)
    with pytest.raises(CatalogueError, match="is a folder, not a file") as err:
        load_catalogue(tmp_path / "a")
    one_line(err)
    root = folder(tmp_path / "b", "image,caption\nimages/0.jpg,Red Shirt\n")
    real = Path.read_bytes

    def denied(self):
        if self.name == "captions.csv":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(Path, "read_bytes", denied)  # chmod 000 does not stop root, who runs CI here
    with pytest.raises(CatalogueError, match="permission denied.*chmod a\\+r") as err:
        load_catalogue(root)
    one_line(err)


def test_image_column_oddities(tmp_path):
    root = folder(tmp_path, "image,caption,item_id\n,No Path,a\nhttps://shop/x.jpg,Remote,b\n"
                            "images\\0.jpg,Windows Path,c\nimages/1.jpg , Spaces ,d\nimages,A Folder,e\n")
    cat = load_catalogue(root)
    assert cat.captions == ["Windows Path", "Spaces"] and cat.images == ["images/0.jpg", "images/1.jpg"]
    assert cat.report.skipped == {"empty image path": 1, "image path is a URL": 1, "image path is a folder": 1}


def test_random_damage_to_a_csv_never_raises_anything_but_catalogue_error(tmp_path):
    base = (b'image,caption,item_id,colour,split\r\nimages/0.jpg,"Red, Shirt",a,Red,train\n'
            b'images/1.jpg,Blue "Jeans",b,Blue,val\nimages/2.jpg,Green Top,c,Green,test\n')
    root = folder(tmp_path, base, n_images=3)
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(300):
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 5))):
            pos = int(rng.integers(0, len(data) + 1))
            op = int(rng.integers(4))
            if op == 0:
                data[pos:pos] = bytes([int(rng.choice([0, 9, 10, 13, 34, 44, 59, 0xE9, 0xEF, 0xFE, 0xFF]))])
            elif op == 1:
                del data[pos:pos + int(rng.integers(1, 10))]
            elif op == 2:
                data[pos:pos] = rng.bytes(int(rng.integers(1, 5)))
            else:
                chunks = [b"sep=;\n", b'"', b"\r", b"\\", b"../", b"http://", b"x" * 200_000]
                data[pos:pos] = chunks[int(rng.integers(len(chunks)))]
        (root / "captions.csv").write_bytes(bytes(data))
        try:
            load_catalogue(root)
            outcomes.add("loaded")
        except CatalogueError as err:
            assert "\n" not in str(err) and "captions.csv" in str(err)
            outcomes.add("refused")
    assert outcomes == {"loaded", "refused"}


# --- --data: folders ----------------------------------------------------------------------------------------

def test_data_paths_that_are_not_catalogue_folders(tmp_path):
    with pytest.raises(CatalogueError, match="does not exist") as err:
        resolve_data(str(tmp_path / "nope"))
    one_line(err)
    f = folder(tmp_path / "cat", "image,caption\nimages/0.jpg,Red Shirt\n") / "captions.csv"
    with pytest.raises(CatalogueError, match=f"is a file, not a folder.*use its folder {f.parent}"):
        open_catalogue(str(f))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogueError, match="the folder is empty") as err:
        open_catalogue(str(tmp_path / "empty"))
    one_line(err)
    with pytest.raises(CatalogueError, match="--data is empty"):
        resolve_data("  ")
    (tmp_path / "kaggle").mkdir()
    (tmp_path / "kaggle" / "styles.csv").write_text("id\n")
    with pytest.raises(CatalogueError, match="import kaggle"):
        open_catalogue(str(tmp_path / "kaggle"))
    assert resolve_data(str(f.parent)) == f.parent


def test_check_cli_reports_errors_in_one_line(tmp_path, capsys):
    assert data_cli(["check", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and err.count("\n") == 1
