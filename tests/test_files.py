"""Folder loading, name selection and saving under the source names: ops directly, nodes through ComfyUI's executor."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import node_error_message, pack_import, run_prompt, workspace
from PIL import Image

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
    with pytest.raises(FileNotFoundError, match="does not exist: create it"):
        ops.list_images(tmp_path / "missing")
    with pytest.raises(ValueError, match="has no images"):
        ops.list_images(tmp_path)
    Image.fromarray(solid((1, 2, 3), (6, 4))).save(tmp_path / "a.png")
    Image.fromarray(solid((1, 2, 3), (5, 4))).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"b.png is 5x4 but a.png is 6x4: .*same size"):
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
