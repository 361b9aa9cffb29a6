"""Bad inputs: every malformed csv, folder, image and split either loads with a report or raises
CatalogueError with one line that names the file and says what to do; never another exception."""
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import damaged, myntra_or_skip
from xmodal.data import (CatalogueError, check_image, describe_split, load_catalogue, make_splits, normalise_caption,
                         open_catalogue, open_rgb, resolve_data, unseen_title_mask)
from xmodal.data import images as images_mod
from xmodal.data.__main__ import main as data_cli
from xmodal.data.catalogue import MAX_CAPTION_CHARS


def folder(root: Path, csv: bytes | str, n_images: int = 4) -> Path:
    """A catalogue folder holding images/0.jpg .. images/{n-1}.jpg and the given captions.csv."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        Image.new("RGB", (24, 32), (40 * i, 90, 200)).save(root / "images" / f"{i}.jpg")
    (root / "captions.csv").write_bytes(csv.encode() if isinstance(csv, str) else csv)
    return root


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


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


# --- images ----------------------------------------------------------------------------------------------

def png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


GRADIENT = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)  # every 16-bit level


@pytest.mark.parametrize("make", [
    lambda: png_bytes(Image.fromarray(GRADIENT)),  # a 16-bit greyscale PNG (opens as I;16)
    lambda: Image.fromarray(GRADIENT.astype(">u2")),  # I;16B
    lambda: Image.fromarray(GRADIENT.astype(np.int32)),  # I: 16-bit values in a 32-bit image
], ids=["png-I;16", "I;16B", "I"])
def test_16bit_greyscale_is_scaled_not_clipped_to_white(make):
    src = make()
    im = open_rgb(src) if isinstance(src, bytes) else images_mod.to_rgb(src)
    a = np.asarray(im)
    assert im.mode == "RGB" and a.shape == (48, 64, 3)
    assert np.abs(a[..., 0].astype(int) - np.rint(GRADIENT / 257.0)).max() <= 1
    assert (a == 255).mean() < 0.01  # was 99.6 % white


def test_float_and_8bit_in_wide_modes():
    ramp = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    assert np.asarray(images_mod.to_rgb(Image.fromarray(ramp, "F")))[..., 0].max() == 255
    assert np.asarray(images_mod.to_rgb(Image.fromarray(ramp, "F")))[0, 0, 0] == 0
    wide = Image.fromarray((ramp * 200).astype(np.int32))  # 8-bit values stored in mode I
    assert np.asarray(images_mod.to_rgb(wide))[..., 0].max() == 200


@pytest.mark.parametrize("make", [
    lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)),
    lambda: Image.new("LA", (8, 8), (0, 0)),
    lambda: Image.open(io.BytesIO(png_bytes(Image.new("P", (8, 8), 0), transparency=0))),
], ids=["RGBA", "LA", "P-transparency"])
def test_transparency_is_composited_on_white(make):
    src = make()
    a = np.asarray(open_rgb(png_bytes(src)))
    assert (a == 255).all()


def test_half_transparent_red_is_pink_on_white():
    a = np.asarray(open_rgb(png_bytes(Image.new("RGBA", (4, 4), (255, 0, 0, 128)))))
    assert tuple(a[0, 0]) == (255, 127, 127) or tuple(a[0, 0]) == (255, 128, 128)


def test_cmyk_and_exif_orientation(tmp_path):
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)
    r, g, b = np.asarray(open_rgb(buf.getvalue())).reshape(-1, 3).mean(0)
    assert r > 230 and g < 30 and b < 30  # red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (30, 40), "white").save(tmp_path / "rot.jpg", exif=exif)
    assert open_rgb(tmp_path / "rot.jpg").size == (40, 30)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own warning, 1x-2x the limit
def test_decompression_bombs_are_too_large_not_corrupt(monkeypatch):
    with pytest.raises(images_mod.ImageError, match="image too large") as err:
        open_rgb(png_header(100_000, 100_000))  # 250x the limit: PIL refuses it at open
    assert err.value.reason == "image too large"
    assert check_image(png_header(7_000, 7_000)) == "image too large"  # between 1x and 2x the limit
    small = png_bytes(Image.new("RGB", (40, 40)))
    assert check_image(small) is None
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 1_000)
    assert check_image(small) == "image too large"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1,600 pixels > 2x: DecompressionBombError at open
    assert check_image(small, max_pixels=10**9) == "image too large"


def test_every_bad_image_gets_its_own_reason_in_the_report(tmp_path):
    root = tmp_path / "cat"
    (root / "images").mkdir(parents=True)
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "JPEG")
    files = {
        "good.jpg": good.getvalue(),
        "grey16.png": png_bytes(Image.fromarray(GRADIENT)),
        "empty.jpg": b"",
        "truncated.jpg": good.getvalue()[: len(good.getvalue()) // 2],
        "text.jpg": b"this is a caption, not a picture\n",
        "page.jpg": b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>",
        "bomb.png": png_header(100_000, 100_000),
        "header.jpg": b"\xff\xd8\xff\xe0 this is not a jpeg",
    }
    for name, data in files.items():
        (root / "images" / name).write_bytes(data)
    (root / "images" / "dir.jpg").mkdir()
    names = [*files, "dir.jpg", "gone.jpg"]
    (root / "captions.csv").write_text("image,caption\n" + "".join(f"images/{n},Item {n}\n" for n in names))
    cat = load_catalogue(root)
    assert cat.images == ["images/good.jpg", "images/grey16.png"]
    assert cat.report.skipped == {"empty image file": 1, "truncated image": 1, "not an image file": 1,
                                  "not an image (an HTML page)": 1, "image too large": 1, "corrupt image": 1,
                                  "image path is a folder": 1, "missing image": 1}
    assert (np.asarray(cat.open_image(1)) == 255).mean() < 0.01  # the 16-bit PNG, not white

    from xmodal.image.backbones import ImageFiles
    pixels = ImageFiles([cat.image_path(1)], lambda im: np.asarray(im))[0]
    assert pixels.shape == (48, 64, 3) and (pixels == 255).mean() < 0.01


def test_unreadable_image_is_its_own_reason(tmp_path, monkeypatch):
    root = folder(tmp_path, "image,caption\nimages/0.jpg,Red Shirt\nimages/1.jpg,Blue Jeans\n")
    real = Path.read_bytes

    def denied(self):
        if self.name == "1.jpg":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(Path, "read_bytes", denied)
    rep = load_catalogue(root).report
    assert rep.skipped == {"image not readable (permission denied)": 1}


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about damaged TIFF tags
def test_damaged_image_bytes_never_raise():
    rng = np.random.default_rng(1)
    sources = []
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, fmt)
        sources.append(buf.getvalue())
    reasons = set()
    for src in sources:
        for k in range(40):
            reasons.add(check_image(damaged(src, rng, k, width=16)))  # a reason or None, never an exception
    assert {"truncated image", "corrupt image"} <= reasons


# --- the split column ------------------------------------------------------------------------------------

def split_csv(tmp_path: Path, values: list[str]) -> Path:
    rows = "".join(f"images/{i}.jpg,Item {i},{v}\n" for i, v in enumerate(values))
    return folder(tmp_path, "image,caption,split\n" + rows, n_images=len(values))


def test_split_synonyms_are_accepted(tmp_path):
    cat = load_catalogue(split_csv(tmp_path, ["Training", " train ", "VALIDATION", "dev", "Testing", "holdout",
                                              "valid", "Test"]))
    assert cat.split_column == ["train", "train", "val", "val", "test", "test", "val", "test"]
    sp = make_splits(cat)
    assert sp["train"].tolist() == [0, 1] and sp["val"].tolist() == [2, 3, 6] and sp["test"].tolist() == [4, 5, 7]
    assert describe_split(cat) == "csv split column"


def test_unknown_split_values_are_refused_with_lines_and_values(tmp_path):
    with pytest.raises(CatalogueError) as err:
        load_catalogue(split_csv(tmp_path, ["train", "tset", "val", "eval", "test", "tset"]))
    msg = one_line(err)
    assert "'tset' on line(s) 3, 7" in msg and "'eval' on line(s) 5" in msg
    assert "Accepted: train, val, test" in msg and "captions.csv" in msg


def test_empty_split_cells_are_refused_with_lines(tmp_path):
    with pytest.raises(CatalogueError, match=r"split column is empty on line\(s\) 3, 5") as err:
        load_catalogue(split_csv(tmp_path, ["train", "", "val", "  ", "test"]))
    one_line(err)


@pytest.mark.parametrize("values, missing", [
    (["train", "train", "train", "test"], "val"),
    (["train", "train", "val", "val"], "test"),
    (["train", "val", "val", "test"], "train"),
])
def test_csv_split_without_val_or_test_is_refused(tmp_path, values, missing):
    cat = load_catalogue(split_csv(tmp_path, values))
    with pytest.raises(CatalogueError, match=f"too few items in {missing}") as err:
        make_splits(cat)
    assert "captions.csv: the csv split column" in one_line(err)


def test_fractions_that_leave_a_split_empty_are_refused(tiny_catalogue):
    cat = load_catalogue(tiny_catalogue)
    for grouping in ("title", "item"):
        with pytest.raises(CatalogueError, match=r"fractions \(0.9, 0.1, 0.0\) leave no test items") as err:
            make_splits(cat, fractions=(0.9, 0.1, 0.0), grouping=grouping)
        one_line(err)
    with pytest.raises(ValueError, match="sum to 1"):
        make_splits(cat, fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="unknown split grouping 'caption'; choose one of title, item"):
        make_splits(cat, grouping="caption")


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_catalogues_are_refused_with_the_count_and_minimum(tmp_path, n):
    cat = load_catalogue(folder(tmp_path, "image,caption\n" + "".join(f"images/{i}.jpg,Item {i}\n"
                                                                       for i in range(n)), n_images=n))
    with pytest.raises(CatalogueError, match=f"only {n} usable item\\(s\\); .* at least 4") as err:
        make_splits(cat)
    one_line(err)


# --- title-grouped split ---------------------------------------------------------------------------------

def dup_catalogue(tmp_path: Path, n_titles: int = 60, seed: int = 0) -> Path:
    """A catalogue whose titles repeat 1-6 times (like shop titles shared across colours)."""
    rng = np.random.default_rng(seed)
    titles = [t for k in range(n_titles) for t in [f"Brand{k} Men Shirt"] * int(rng.integers(1, 7))]
    titles = [t.upper() if i % 3 == 0 else t for i, t in enumerate(titles)]  # same title, other case
    rows = "".join(f"images/0.jpg,{t},id{i}\n" for i, t in enumerate(titles))
    return folder(tmp_path, "image,caption,item_id\n" + rows, n_images=1)


def test_title_grouped_split_keeps_identical_titles_together(tmp_path):
    cat = load_catalogue(dup_catalogue(tmp_path))
    sp = make_splits(cat, seed=0)  # title grouping is the default
    assert sorted(np.concatenate(list(sp.values())).tolist()) == list(range(len(cat)))
    key = [normalise_caption(c) for c in cat.captions]
    train = {key[i] for i in sp["train"]}
    assert not train & {key[i] for i in sp["val"]} and not train & {key[i] for i in sp["test"]}
    assert not {key[i] for i in sp["val"]} & {key[i] for i in sp["test"]}
    assert unseen_title_mask(cat, sp["test"], sp["train"]).all()
    n = len(cat)
    assert abs(len(sp["train"]) - 0.8 * n) <= 6 and abs(len(sp["test"]) - 0.1 * n) <= 6
    again = make_splits(cat, seed=0)
    assert all(np.array_equal(sp[s], again[s]) for s in sp)
    assert not np.array_equal(sp["test"], make_splits(cat, seed=1)["test"])
    item = make_splits(cat, seed=0, grouping="item")
    assert not unseen_title_mask(cat, item["test"], item["train"]).all()  # the item split leaks titles


def test_title_split_refuses_too_few_distinct_titles(tmp_path):
    root = folder(tmp_path, "image,caption\n" + "images/0.jpg,Same Shirt\n" * 5 + "images/0.jpg,Other\n", 1)
    cat = load_catalogue(root)
    with pytest.raises(CatalogueError, match="2 distinct titles.*item-level grouping") as err:
        make_splits(cat)
    one_line(err)
    assert sum(map(len, make_splits(cat, grouping="item").values())) == 6


def test_unseen_title_mask():
    from xmodal.data import Catalogue, LoadReport
    cat = Catalogue(root=Path("."), images=["a"] * 4, captions=["Red Shirt", "red  shirt", "Blue Jeans", "Cap"],
                    item_ids=list("abcd"), attributes={}, split_column=None, report=LoadReport(), fingerprint="x")
    assert unseen_title_mask(cat, [1, 2, 3], [0]).tolist() == [False, True, True]
    assert unseen_title_mask(cat, [], [0]).dtype == bool


def test_myntra_title_split_has_no_title_leakage():
    cat = load_catalogue(myntra_or_skip(), check_images=False)
    sp = make_splits(cat, seed=0)
    assert not (~unseen_title_mask(cat, sp["test"], sp["train"])).any()
    assert not (~unseen_title_mask(cat, sp["val"], sp["train"])).any()
    n = len(cat)
    assert all(abs(len(sp[s]) - f * n) <= 0.01 * n for s, f in zip(("train", "val", "test"), (0.8, 0.1, 0.1)))


def test_each_photos_check_is_remembered_by_its_bytes(tmp_path, monkeypatch):
    """Loading a catalogue again decodes no photo twice; a photo whose bytes changed is checked again."""
    from xmodal.data import catalogue as catalogue_mod
    from xmodal.data import generate_demo
    folder = generate_demo(tmp_path / "cat", n=12, seed=3)
    checked = []
    real = catalogue_mod.check_image
    monkeypatch.setattr(catalogue_mod, "check_image", lambda data: checked.append(len(data)) or real(data))
    monkeypatch.setattr(catalogue_mod, "_VERDICTS", {})
    first = load_catalogue(folder)
    assert len(checked) == 12
    again = load_catalogue(folder)
    assert len(checked) == 12 and again.fingerprint == first.fingerprint  # nothing decoded again
    (folder / first.images[0]).write_bytes(b"\xff\xd8 not a jpeg any more")
    third = load_catalogue(folder)
    assert len(checked) == 13 and len(third) == 11  # the changed file was checked again, and dropped
