"""Folder loading, name selection and saving under the source names: ops directly, nodes through ComfyUI's executor."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import node_error_message, pack_import, run_prompt, workspace
from PIL import Image
from PIL.PngImagePlugin import PngInfo

ops = pack_import("nodes.ops.files")


def write_folder(name: str, pictures: dict[str, np.ndarray]) -> Path:
    folder = workspace().input / name
    folder.mkdir(parents=True, exist_ok=True)
    for file, pixels in pictures.items():
        Image.fromarray(pixels).save(folder / file)
    return folder


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> np.ndarray:
    return np.full((size[1], size[0], 3), rgb, np.uint8)


def test_list_and_load_sorted_with_exact_values(tmp_path):
    for name, rgb in (("b.png", (10, 20, 30)), ("a.jpg", (0, 0, 0)), ("c.webp", (255, 128, 1))):
        Image.fromarray(solid(rgb)).save(tmp_path / name, **({"lossless": True} if name.endswith("webp") else {}))
    (tmp_path / "notes.txt").write_text("not an image")
    files = ops.list_images(tmp_path)
    assert [p.name for p in files] == ["a.jpg", "b.png", "c.webp"]
    images, names = ops.load_batch(files[1:])
    assert names == ["b", "c"] and images.shape == (2, 4, 6, 3) and images.dtype == torch.float32
    assert images[0, 0, 0].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255], abs=1e-7)
    assert images[1, 3, 5].tolist() == pytest.approx([1.0, 128 / 255, 1 / 255], abs=1e-7)


def test_every_reader_takes_the_same_image_suffixes_in_any_case(tmp_path):
    """Photo folders, example folders and training datasets share one suffix list, compared case-insensitively."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.JPG", "b.webp", "c.Jpeg", "d.png", "e.BMP", "f.tif", "g.TIFF", "h.gif"):
        Image.fromarray(solid((40, 80, 120))).save(photos / name, format="PNG")  # the reader goes by suffix
    (photos / "notes.txt").write_text("not an image")
    expected = ["a.JPG", "b.webp", "c.Jpeg", "d.png", "e.BMP", "f.tif", "g.TIFF"]
    assert [p.name for p in ops.list_images(photos)] == expected
    assert ops.example_images(photos) == expected
    dataset = tmp_path / "dataset"
    for sub, name in (("images", "cat.JPG"), ("controls", "cat.webp"), ("masks", "cat.TIF")):
        (dataset / sub).mkdir(parents=True)
        Image.fromarray(solid((255, 255, 255), (8, 8))).save(dataset / sub / name, format="PNG")
    data = ops.read_dataset_folder(str(dataset))
    assert data.names == ["cat"] and data.images.shape == (1, 8, 8, 3) and float(data.masks.min()) == 1.0


def test_folder_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: create it inside ComfyUI's input folder and put the "
                                                "photos there$"):
        ops.list_images(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"has no images \(\.png, \.jpg, \.jpeg, \.webp, \.bmp, \.tif, \.tiff\): put the "
                                         "photos there$"):
        ops.list_images(tmp_path)
    Image.fromarray(solid((1, 2, 3), (6, 4))).save(tmp_path / "a.png")
    Image.fromarray(solid((1, 2, 3), (5, 4))).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"^b.png is 5x4 but a.png is 6x4: the photos of one folder must have the same "
                                         r"size \(resize them, or split the folder\)$"):
        ops.load_batch(ops.list_images(tmp_path))


def test_names_follow_the_indices_and_paths_stay_inside(tmp_path):
    assert ops.select_names(["a", "b", "c"], "[0, 2]") == ["a", "c"]
    assert ops.select_names(["a", "b", "c"], "[]") == []
    with pytest.raises(ValueError, match="do not fit the 3 names"):
        ops.select_names(["a", "b", "c"], "[3]")
    with pytest.raises(ValueError, match="JSON list of batch indices"):
        ops.select_names(["a"], "0, 1")
    with pytest.raises(ValueError, match="JSON list of non-empty file names"):
        ops.names_from_json('["a", ""]')
    assert ops.named_paths(tmp_path, "shots", ["a", "c"]) == [(tmp_path / "shots" / f"{n}.png").resolve() for n in "ac"]
    with pytest.raises(ValueError, match="must be inside ComfyUI.s output folder"):
        ops.named_paths(tmp_path, "../elsewhere", ["a"])
    for bad in ("../a", "x/a"):
        with pytest.raises(ValueError, match="not a plain file name"):
            ops.named_paths(tmp_path, "shots", [bad])
    with pytest.raises(ValueError, match=r"file names repeat \(a.png\)"):
        ops.named_paths(tmp_path, "shots", ["a", "b", "a"])


def test_load_select_save_through_the_executor():
    """Photos of mixed sizes come one by one (a list output), each with its own name, and are saved under it."""
    colours = {"red.png": ((230, 20, 20), (6, 4)), "green.png": ((20, 200, 20), (5, 7)),
               "blue.png": ((20, 20, 230), (3, 3))}
    write_folder("files_test", {name: solid(rgb, size) for name, (rgb, size) in colours.items()})
    out_dir = workspace().output / "named_test"
    for stale in out_dir.glob("*.png"):
        stale.unlink()
    prompt = {
        "1": {"class_type": "SCLoadImageFolder", "inputs": {"folder": "files_test"}},
        "2": {"class_type": "SCSelectNames", "inputs": {"names": '["blue", "green", "red"]', "indices": "[0, 2]"}},
        "6": {"class_type": "SCSaveImagesNamed", "inputs": {"images": ["1", 0], "names": ["1", 1],
                                                          "subfolder": "named_test"}},
    }
    result = run_prompt(prompt, outputs=["1", "2", "6"])
    images, names, count = (result.output("1", i) for i in range(3))
    assert [json.loads(n) for n in names] == [["blue"], ["green"], ["red"]] and count == 3
    assert [tuple(i.shape) for i in images] == [(1, 3, 3, 3), (1, 7, 5, 3), (1, 4, 6, 3)]  # sizes kept
    assert json.loads(result.output("2")) == ["blue", "red"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["blue.png", "green.png", "red.png"]
    for name, (rgb, size) in colours.items():
        with Image.open(out_dir / name) as saved:
            assert json.loads(saved.text["prompt"]) == prompt  # the workflow travels with the file, as in core
            assert saved.size == size and (np.asarray(saved) == np.array(rgb, np.uint8)).all()  # exact round trip


def test_pack_examples_load_without_copying():
    """The example photos ship with the pack: the example node and 'pack examples/' folders read them in place."""
    result = run_prompt({
        "1": {"class_type": "SCLoadExampleImage", "inputs": {"image": "coffee_cup.jpg"}},
        "2": {"class_type": "SCLoadImageFolder", "inputs": {"folder": "pack examples/catalog"}},
    }, outputs=["1", "2"])
    assert tuple(result.output("1").shape) == (1, 400, 600, 3)
    names = [json.loads(n)[0] for n in result.output("2", 1)]
    assert names == ["astronaut", "chelsea_cat", "coffee_cup", "coffee_cup_small"]
    assert len({tuple(i.shape) for i in result.output("2", 0)}) == 4  # four sizes


def test_node_errors():
    write_folder("files_one", {"a.png": solid((1, 1, 1))})
    message = node_error_message({
        "1": {"class_type": "SCLoadImageFolder", "inputs": {"folder": "files_one"}},
        "2": {"class_type": "SCSaveImagesNamed", "inputs": {"images": ["1", 0], "names": '["a", "b"]',
                                                          "subfolder": "named_test"}},
    })
    assert "2 names for a batch of 1 images" in message


# --------------------------------------------------------------------------- limits and messages, by hand


def test_check_text_refuses_control_characters_and_counts_utf8_bytes():
    assert ops.check_text(" ~name é", "folder") == " ~name é"  # space (32) and ~ (126) are printable
    for bad in ("a\x00b", "a\nb", "a\x1fb", "a\x7fb"):
        with pytest.raises(ValueError, match=r"^folder '.*' contains a control character \(NUL, newline, tab, ...\): "
                                             "file and folder names cannot hold them$"):
            ops.check_text(bad, "folder")
    with pytest.raises(ValueError, match="^folder must be text, got int$"):
        ops.check_text(3, "folder")
    assert ops.check_text("a" * 10, "name", 10) == "a" * 10
    with pytest.raises(ValueError, match=r"^name 'aaaaaaaaaaa' is 11 characters long: at most 10 bytes$"):
        ops.check_text("a" * 11, "name", 10)
    with pytest.raises(ValueError, match="is 6 characters long: at most 10 bytes"):  # 6 characters, 12 bytes
        ops.check_text("é" * 6, "name", 10)
    ops.check_text("a" * ops.MAX_PATH_CHARS, "name")
    with pytest.raises(ValueError, match=f"^name '{'a' * 79}\\\\n' contains"):  # 80 characters: shown whole
        ops.check_text("a" * 79 + "\n", "name")
    with pytest.raises(ValueError, match=f"^name '{'a' * 80}...' contains"):  # 81: cut at 80
        ops.check_text("a" * 80 + "\n", "name")
    with pytest.raises(ValueError, match=f"^name '{'a' * 80}...' is 1025 characters long: at most 1024 bytes$"):
        ops.check_text("a" * 1025, "name")


def test_inside_folder_takes_names_in_any_root_and_refuses_the_rest(tmp_path):
    first, second = tmp_path / "first", tmp_path / "first2"
    (first / "sub").mkdir(parents=True)
    (second / "only").mkdir(parents=True)
    assert ops.inside_folder("sub", [first, second], "folder", "the input folder") == first / "sub"
    assert ops.inside_folder("only", [first, second], "folder", "the input folder") == second / "only"  # the one holding it
    assert ops.inside_folder("new", [first, second], "folder", "the input folder") == first / "new"  # none: the first
    assert ops.inside_folder(".", [first], "folder", "the input folder") == first  # the root itself
    assert ops.inside_folder(str(second / "only"), [first, second], "folder", "x") == second / "only"  # absolute inside
    message = (r"^folder '\.\./first2/only' must be inside the input folder: give a name relative to it \(absolute paths "
               r"are taken only inside the folders ComfyUI is configured with, e\.g\. extra_model_paths\.yaml; '\.\.' "
               r"and links that lead out of the folder are refused\)$")
    with pytest.raises(ops.OutsideFolder, match=message):  # a sibling whose name starts with the root's
        ops.inside_folder("../first2/only", [first], "folder", "the input folder")
    (first / "out").symlink_to(second)
    with pytest.raises(ops.OutsideFolder):
        ops.inside_folder("out/only", [first], "folder", "the input folder")
    assert ops.inside_folder("out/only", [first, second], "folder", "x") == second / "only"  # leads into a root
    with pytest.raises(ValueError, match=r"^folder 'a\\nb' contains a control character"):
        ops.inside_folder("a\nb", [first], "folder", "x")
    nested, deeper = tmp_path / "nested", tmp_path / "n2" / "deeper"
    deeper.mkdir(parents=True)
    nested.mkdir()
    # climbs out of the first root into the second: inside one of them, so taken
    assert ops.inside_folder("../deeper/x", [nested, deeper], "folder", "x") == deeper / "x"
    assert ops.inside_folder("etc", ["/"], "folder", "x") == Path("/etc")  # the file system root as a root
    linked_root = tmp_path / "linked"
    linked_root.symlink_to(first)
    assert ops.inside_folder("sub", [linked_root], "folder", "x") == first / "sub"


def test_inside_folder_limits_each_name_to_255_bytes(tmp_path):
    longest = "a" * 255
    assert ops.inside_folder(f"x/{longest}", [tmp_path], "file", "x") == tmp_path / "x" / longest
    for value in (f"x/{longest}b", f"x\\{longest}b", "é" * 128):
        with pytest.raises(ValueError, match=r"^file '.*' has a name longer than 255 bytes$"):
            ops.inside_folder(value, [tmp_path], "file", "x")


def test_named_paths_limit_the_name_with_its_suffix_and_refuse_dots(tmp_path):
    assert ops.named_paths(tmp_path, "s", ["a" * 251])[0].name == "a" * 251 + ".png"  # 255 bytes with .png
    with pytest.raises(ValueError, match="is 252 characters long: at most 251 bytes"):
        ops.named_paths(tmp_path, "s", ["a" * 252])
    assert ops.named_paths(tmp_path, "s", ["a" * 253], suffix=".x")[0].name == "a" * 253 + ".x"
    for bad in (".", "..", "a\\b"):
        with pytest.raises(ValueError, match=rf"^file name {re.escape(repr(bad))} is not a plain file name \(no folders or '\.\.'\)$"):
            ops.named_paths(tmp_path, "s", [bad])
    with pytest.raises(ValueError, match=r"^subfolder '\.\./elsewhere' must be inside ComfyUI's output folder: "):
        ops.named_paths(tmp_path / "out", "../elsewhere", ["a"])
    with pytest.raises(ValueError, match=r"^file name 'a\\tb' contains a control character"):
        ops.named_paths(tmp_path, "s", ["a\tb"])
    (tmp_path / "s").mkdir(exist_ok=True)
    (tmp_path / "s" / "away.png").symlink_to(tmp_path.parent / "elsewhere.png")
    with pytest.raises(ValueError, match=r"^file name 's/away\.png' must be inside ComfyUI's output folder: "):
        ops.named_paths(tmp_path, "s", ["away"])
    with pytest.raises(ValueError, match=r"^file names repeat \(a\.png, b\.png\): each image needs its own name$"):
        ops.named_paths(tmp_path, "s", ["b", "a", "b", "a", "c"])


def test_names_and_indices_json_errors_say_where_they_come_from():
    assert ops.names_from_json('["b", "a"]') == ["b", "a"]
    with pytest.raises(ValueError, match=r"^names must be a JSON list of file names \(from Load Image Folder\): Expecting value"):
        ops.names_from_json("a, b")
    with pytest.raises(ValueError, match=r"^shots must be a JSON list of non-empty file names \(from Load Image Folder\), got '\{\}'$"):
        ops.names_from_json("{}", "shots")
    with pytest.raises(ValueError, match="non-empty file names"):
        ops.names_from_json("[1]")
    with pytest.raises(ValueError, match=r"^indices must be a JSON list of batch indices \(from Filter By Found\): Expecting"):
        ops.select_names(["a"], "[0")
    assert ops.select_names(["a", "b", "c"], "[2, 0, 2]") == ["c", "a", "c"]
    long_text = "[" + ", ".join(["-1"] * 80) + "]"  # 318 characters: the message shows the first 200
    with pytest.raises(ValueError, match=rf"^indices {re.escape(repr(long_text[:200]))} do not fit"):
        ops.select_names(["a"], long_text)
    with pytest.raises(ValueError, match=rf"got {re.escape(repr(long_text[:200]))}$"):
        ops.names_from_json(long_text)
    for bad in ("[-1]", "{}", '["0"]', "[0.0]"):
        with pytest.raises(ValueError, match=rf"^indices {re.escape(repr(bad))} do not fit the 3 names: connect the names of the batch that was filtered$"):
            ops.select_names(["a", "b", "c"], bad)


def test_save_png_rounds_to_the_nearest_level_and_counts_past_the_highest(tmp_path):
    image = torch.tensor([[[0.0, 0.5, 1.0, 0.25], [0.498, 0.502, 0.002, 0.0]]])  # [1,2,4]: RGBA, alpha dropped
    path = tmp_path / "new" / "deeper" / "shot.png"
    assert ops.save_png(image, path) == path
    with Image.open(path) as saved:
        assert saved.mode == "RGB" and np.asarray(saved).tolist() == [[[0, 128, 255], [127, 128, 1]]]
    (path.parent / "shot_00041_.png").write_bytes(b"x")
    (path.parent / "shot_00099_.png.bak").write_bytes(b"x")  # not a counted name
    (path.parent / "shot_0100_.png").write_bytes(b"x")  # four digits: not a counted name either
    assert ops.save_png(image, path).name == "shot_00042_.png"
    assert ops.save_png(image, path).name == "shot_00043_.png"
    assert ops.save_png(image, path, if_exists="skip") is None
    info = PngInfo()
    info.add_text("prompt", "{}")
    dark = torch.zeros(1, 1, 3)
    assert ops.save_png(dark, path, info, if_exists="replace") == path
    with Image.open(path) as replaced:
        assert np.asarray(replaced).max() == 0 and replaced.text == {"prompt": "{}"}
    assert ops.save_png(dark, tmp_path / "other.png", if_exists="skip") == tmp_path / "other.png"
    for if_exists in ("replace", "add counter"):  # a PNG whatever the suffix says
        written = ops.save_png(dark, tmp_path / f"{if_exists}.bin", if_exists=if_exists)
        assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = ops._free_names(path)  # when a counted name is taken between listing and writing: the next one
    assert [next(names).name for _ in range(4)] == ["shot.png", "shot_00044_.png", "shot_00045_.png", "shot_00046_.png"]
    with pytest.raises(ValueError, match=r"^if_exists 'keep' is not one of add counter, skip, replace$"):
        ops.save_png(dark, path, if_exists="keep")


def test_example_folders_and_images_list_only_image_folders(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "empty").mkdir()
    Image.fromarray(solid((1, 2, 3))).save(tmp_path / "b" / "y.png")
    Image.fromarray(solid((1, 2, 3))).save(tmp_path / "a" / "z.png")
    Image.fromarray(solid((1, 2, 3))).save(tmp_path / "top.png")
    assert ops.example_folders(tmp_path, "pack examples/") == ["pack examples/a", "pack examples/b"]
    assert ops.example_folders(tmp_path / "missing", "x") == [] and ops.example_images(tmp_path / "missing") == []
    assert ops.example_images(tmp_path) == ["top.png"]
    Image.fromarray(solid((9, 9, 9), (3, 2))).save(tmp_path / "a" / "w.png")
    images, names = ops.load_each(ops.list_images(tmp_path / "a"))
    assert names == ["w", "z"] and [tuple(i.shape) for i in images] == [(1, 2, 3, 3), (1, 4, 6, 3)]
    assert images[0][0, 1, 2].tolist() == pytest.approx([9 / 255] * 3)


def _dataset(root: Path, images: dict[str, np.ndarray], controls: dict[str, np.ndarray], masks: dict[str, np.ndarray]):
    for sub, files in (("images", images), ("controls", controls), ("masks", masks)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for name, pixels in files.items():
            Image.fromarray(pixels).save(root / sub / name)
    return root


def test_dataset_folder_crops_to_the_downscale_and_resizes_masks_bilinearly(tmp_path):
    pixels = np.arange(10 * 13 * 3, dtype=np.uint32).reshape(10, 13, 3).astype(np.uint8)
    mask = np.array([[0, 255], [0, 255]], np.uint8)  # 2x2, resized to 10x13 with half-pixel centres
    root = _dataset(tmp_path, {"a.png": pixels}, {"a.png": pixels[::-1].copy()}, {"a.png": mask})
    (root / "images" / "a.txt").write_text("  a caption é \n", encoding="utf-8")
    data = ops.read_dataset_folder(str(root), downscale=4)
    # 10 rows: 10 % 4 = 2, one row off the top, 8 kept; 13 columns: one left over, none off the left, 12 kept
    assert data.images.shape == (1, 8, 12, 3) and data.controls.shape == (1, 8, 12, 3) and data.masks.shape == (1, 8, 12)
    assert torch.equal(data.images[0], torch.from_numpy(pixels[1:9, 0:12] / np.float32(255)))
    assert torch.equal(data.controls[0], torch.from_numpy(pixels[::-1][1:9, 0:12] / np.float32(255)))
    x = (np.arange(13) + 0.5) * 2 / 13 - 0.5  # the source column of each output column
    expected = np.clip(x, 0.0, 1.0)[:12]
    assert data.masks[0, 3].numpy() == pytest.approx(expected, abs=1e-6)
    assert data.captions == ["a caption é"] and data.names == ["a"]


def test_dataset_folder_reads_32_bit_integer_masks_on_the_8_bit_scale_as_core_loadimage(tmp_path):
    """Mode "I" images are scaled by 1/255 before the 8-bit conversion, as core LoadImage does."""
    root = _dataset(tmp_path, {"a.png": solid((0, 0, 0), (8, 8))}, {"a.png": solid((0, 0, 0), (8, 8))}, {})
    Image.fromarray(np.full((8, 8), 128 * 255, np.int32)).save(root / "masks" / "a.tif")
    with Image.open(root / "masks" / "a.tif") as check:
        assert check.mode == "I"
    data = ops.read_dataset_folder(str(root))
    assert data.masks.unique().tolist() == pytest.approx([128 / 255]) and data.captions is None


def test_dataset_folder_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=rf"^dataset folder {re.escape(str(tmp_path / 'none'))} does not exist$"):
        ops.read_dataset_folder(str(tmp_path / "none"))
    black = solid((0, 0, 0), (8, 8))
    root = _dataset(tmp_path / "one", {"a.png": black, "b.png": black, "c.png": black}, {"a.png": black}, {})
    with pytest.raises(ValueError, match=r"^.*one/controls has no file for image b\.png \(expected controls/b\.png or "
                                         r"another image type\); 1 more images lack one too$"):
        ops.read_dataset_folder(str(root))
    _dataset(root, {}, {"b.png": black, "c.jpg": black}, {"b.png": black})
    with pytest.raises(ValueError, match=r"^.*one/masks has no file for image a\.png \(expected masks/a\.png or another "
                                         r"image type\); 1 more images lack one too$"):
        ops.read_dataset_folder(str(root))
    _dataset(root, {}, {}, {"a.png": black})
    with pytest.raises(ValueError, match=r"^.*one/masks has no file for image c\.png \(expected masks/c\.png or another "
                                         r"image type\)$"):
        ops.read_dataset_folder(str(root))
    _dataset(root, {}, {}, {"c.webp": black})
    assert ops.read_dataset_folder(str(root)).names == ["a", "b", "c"]
    Image.fromarray(black).save(root / "images" / "c.jpg")
    with pytest.raises(ValueError, match=r"^.*one/images has two files named c \(c\.jpg and c\.png\); keep one$"):
        ops.read_dataset_folder(str(root))
    (root / "images" / "c.jpg").unlink()
    (root / "masks" / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"^cannot read .*one/masks/b\.png as an image: "):
        ops.read_dataset_folder(str(root))
    captioned = _dataset(tmp_path / "captioned", {"a.png": black, "b.png": black}, {"a.png": black, "b.png": black},
                         {"a.png": black, "b.png": black})
    (captioned / "images" / "b.txt").write_text("one", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^.*captioned/images/a\.txt is missing: a\.png has no caption but 1 other images "
                                         r"have one; give every image a caption, or none to use the positive prompt for all$"):
        ops.read_dataset_folder(str(captioned))
    wide, tall = solid((0, 0, 0), (16, 8)), solid((0, 0, 0), (8, 16))
    shapes = _dataset(tmp_path / "shapes", {"a.png": wide, "b.png": tall}, {"a.png": wide, "b.png": tall},
                      {"a.png": wide, "b.png": tall})
    with pytest.raises(ValueError, match=r"^images/b\.png is 8x16 but images/a\.png is 16x8; training images must share "
                                         r"one size \(resize or crop them first\)$"):
        ops.read_dataset_folder(str(shapes))
    Image.fromarray(wide).save(shapes / "images" / "b.png")
    with pytest.raises(ValueError, match=r"^controls/b\.png is 8x16 but its image is 16x8; control images must have "
                                         r"their image's size$"):
        ops.read_dataset_folder(str(shapes))
    empty = _dataset(tmp_path / "empty", {}, {}, {})
    with pytest.raises(ValueError, match=rf"^{re.escape(str(empty / 'images'))} holds no images "
                                         r"\(\.png, \.jpg, \.jpeg, \.webp, \.bmp, \.tif, \.tiff\)$"):
        ops.read_dataset_folder(str(empty))
    small = _dataset(tmp_path / "small", {"a.png": solid((0, 0, 0), (9, 7))}, {"a.png": solid((0, 0, 0), (9, 7))},
                     {"a.png": np.zeros((7, 9), np.uint8)})
    with pytest.raises(ValueError, match=r"^training images are 9x7; they need at least 8 pixels a side$"):
        ops.read_dataset_folder(str(small))
    assert ops.read_dataset_folder(str(small), downscale=7).images.shape == (1, 7, 7, 3)
    with pytest.raises(ValueError, match=r"^dataset folder .*small has no controls/ subfolder; it needs images/, "
                                         r"controls/ and masks/ with files matched by name \(images/cat\.png, "
                                         r"controls/cat\.png, masks/cat\.png\)$"):
        for f in (small / "controls").iterdir():
            f.unlink()
        (small / "controls").rmdir()
        ops.read_dataset_folder(str(small))


def test_dataset_folder_reads_grey_and_rgba_files_as_rgb(tmp_path):
    grey = np.full((8, 8), 77, np.uint8)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    root = _dataset(tmp_path, {"a.png": grey}, {"a.png": rgba}, {"a.png": np.full((8, 8), 255, np.uint8)})
    data = ops.read_dataset_folder(str(root))
    assert data.images.shape == (1, 8, 8, 3) and data.controls.shape == (1, 8, 8, 3)
    assert data.images[0, 4, 4].tolist() == pytest.approx([77 / 255] * 3)
    assert data.controls[0, 4, 4].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    images, names = ops.load_batch([root / "images" / "a.png", root / "controls" / "a.png"])
    assert images.shape == (2, 8, 8, 3) and names == ["a", "a"]
    assert images[:, 2, 3].flatten().tolist() == pytest.approx([77 / 255] * 3 + [10 / 255, 20 / 255, 30 / 255])
