"""Calibration, validation and fine-tuning data: load it, preprocess it, fit it to the model.

Accepted forms: an .npz with array `x` (and optional integer labels `y`), an
.npy, a folder of images (class-named subfolders give labels), a numpy array,
an (x, y) tuple or a {"x": ..., "y": ...} dict. A model with several inputs takes
an .npz or dict with one array per input name (and `y`), or a tuple of arrays in
input order (optionally `(inputs, y)`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgesdk.errors import DataError
from edgesdk.util import first_line
from .inputs import Inputs, complete

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FEW_CALIBRATION_SAMPLES = 100


@dataclass(frozen=True)
class Preprocess:
    """How raw values become model inputs: x * scale + offset, then (x - mean) / std.

    Image folders default to scale 1/255 (pixels in [0, 1]); arrays are used as
    they are unless an option is given.
    """

    # the metadata makes the CLI's flags and the docs' lines (edgesdk.conversion.options)
    scale: float | None = field(default=None, metadata={
        "help": "Preprocess: x * scale + offset (image folders default to 1/255).", "type": float})
    offset: float = field(default=0.0, metadata={"help": "Preprocess: added after --scale.", "type": float})
    mean: tuple = field(default=(), metadata={"help": "Preprocess: subtract, per channel: 0.485,0.456,0.406.",
                                              "parse": "floats"})
    std: tuple = field(default=(), metadata={"help": "Preprocess: divide, per channel: 0.229,0.224,0.225.",
                                             "parse": "floats"})
    channel_order: str = field(default="rgb", metadata={"help": "Channel order of image-folder inputs.",
                                                        "choices": ("rgb", "bgr")})

    def __post_init__(self):
        for name in ("mean", "std"):  # one number or a sequence, from Python, a TOML file or a manifest
            value = getattr(self, name)
            try:
                value = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else (value,)))
            except (TypeError, ValueError):
                raise DataError(f"--{name} takes numbers, one per channel (0.5,0.5,0.5), got {value!r}.") from None
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def apply(self, x: np.ndarray, *, is_image: bool) -> np.ndarray:
        x = x.astype(np.float32, copy=True)
        scale = self.scale if self.scale is not None else (1.0 / 255.0 if is_image else 1.0)
        if scale != 1.0 or self.offset:
            x = x * np.float32(scale) + np.float32(self.offset)
        if self.mean:
            x = x - _per_channel(x, self.mean, "--mean")
        if self.std:
            x = x / _per_channel(x, self.std, "--std")
        return x


def _per_channel(x: np.ndarray, values, option: str) -> np.ndarray:
    """Values shaped to broadcast over the channel axis: last (NHWC) or, for NCHW batches, axis 1."""
    v = np.asarray(values, np.float32)
    if v.size == 1 or x.shape[-1] == v.size:
        return v if v.size > 1 else v.reshape(())
    if x.ndim == 4 and x.shape[1] == v.size:
        return v.reshape(-1, 1, 1)
    raise DataError(f"{option} has {v.size} values, but the data's channel axis has "
                    f"{x.shape[-1] if x.ndim < 4 else f'{x.shape[-1]} (NHWC) or {x.shape[1]} (NCHW)'}: give one "
                    f"value, or one per channel.")


@dataclass
class Dataset:
    x: np.ndarray | Inputs  # Inputs for a model with several inputs
    y: np.ndarray | None = None
    source: str = "array"
    class_names: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    boxes: list | None = None  # detection labels: per image an (objects, 5) array of class, x1, y1, x2, y2 in 0..1

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx) -> "Dataset":
        boxes = None if self.boxes is None else [self.boxes[i] for i in np.arange(len(self))[idx]]
        return Dataset(self.x[idx], None if self.y is None else self.y[idx], self.source,
                       self.class_names, list(self.notes), boxes)

    @property
    def labels(self):
        """What the gate compares with: boxes for detection data, else class labels."""
        return self.boxes if self.boxes is not None else self.y


def _labels(y, n: int, source: str):
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        y = y.argmax(axis=1)
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        if y.ndim == 1 and np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{source}: labels 'y' must be integer class indices of shape (N,) "
                            f"(or one-hot (N, C)); got dtype {y.dtype} and shape {y.shape}.")
    if len(y) != n:
        raise DataError(f"{source}: {n} samples in 'x' but {len(y)} labels in 'y'; they must match.")
    return y.astype(np.int64)


def _yolo_boxes(files) -> list | None:
    """YOLO label files beside the images (`class cx cy w h`, normalised), if there are any."""
    if not any(f.with_suffix(".txt").is_file() for f, _ in files):
        return None
    boxes = []
    for f, _ in files:
        label = f.with_suffix(".txt")
        rows = []
        if label.is_file():
            for n, line in enumerate(label.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    c, cx, cy, w, h = (float(v) for v in line.split()[:5])
                except ValueError:
                    raise DataError(f"{label}:{n}: expected 'class cx cy w h' (YOLO, normalised to 0..1), "
                                    f"got {line.strip()[:60]!r}.") from None
                rows.append([c, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        boxes.append(np.asarray(rows, np.float64).reshape(-1, 5))
    return boxes


def _coco_boxes(folder: Path, files) -> list | None:
    """A COCO json in the folder: boxes per image by file name; classes in the sorted order of category ids."""
    import json
    found = sorted(folder.glob("*.json"))
    if not found:
        return None
    try:
        doc = json.loads(found[0].read_text())
        images = {im["id"]: im for im in doc["images"]}
        order = {c: i for i, c in enumerate(sorted(cat["id"] for cat in doc["categories"]))}
        per_file: dict = {}
        for a in doc["annotations"]:
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            W, H = float(im["width"]), float(im["height"])
            per_file.setdefault(Path(im["file_name"]).name, []).append(
                [order[a["category_id"]], x / W, y / H, (x + w) / W, (y + h) / H])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{found[0]}: not a COCO annotation file ({type(exc).__name__}: {exc}); it needs "
                        f"'images' (id, file_name, width, height), 'categories' and 'annotations' "
                        f"(image_id, category_id, bbox).") from None
    return [np.asarray(per_file.get(f.name, []), np.float64).reshape(-1, 5) for f, _ in files]


def _load_images(folder: Path, target_hw, channels: int, preprocess: Preprocess) -> Dataset:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("Reading a folder of images needs Pillow: pip install 'edgesdk[keras]'") from None
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        files = [(f, i) for i, d in enumerate(subdirs) for f in sorted(d.iterdir())
                 if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]  # a FIFO named x.png would block
        class_names = [d.name for d in subdirs]
    else:
        files = [(f, None) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
        class_names = []
    if not files:
        raise DataError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
                        f"directly or in class-named subfolders).")
    if target_hw is None or None in target_hw:
        raise DataError(f"{folder}: the model's input has no fixed height/width, so images cannot be "
                        f"resized for it; give the data as an .npz instead.")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode).resize((target_hw[1], target_hw[0]), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32)
        except Exception as exc:
            raise DataError(f"{f}: cannot read this image ({exc}). Remove it or replace it.") from None
        a = a[..., None] if a.ndim == 2 else a
        if channels == 3 and preprocess.channel_order == "bgr":
            a = a[..., ::-1]
        arrays.append(a)
    x = preprocess.apply(np.stack(arrays), is_image=True)
    y = np.asarray([i for _, i in files]) if class_names else None
    notes = [f"{len(files)} images resized to {target_hw[0]}x{target_hw[1]} {mode}"]
    boxes = None if class_names else (_yolo_boxes(files) or _coco_boxes(folder, files))
    if boxes is not None:
        notes.append(f"{sum(len(b) for b in boxes)} labelled boxes")
    return Dataset(x, y, str(folder), class_names, notes, boxes)


def load_data(spec, *, input_shape=None, input_dtype: str = "float32", preprocess: Preprocess | None = None,
              what: str = "data", layout: str | None = None) -> Dataset:
    """Read `spec` into a Dataset shaped for a model whose input is `input_shape` (batch first).

    An integer input (token ids, byte values) takes integer data as it is: no preprocessing, no float.
    """
    integer_input = np.issubdtype(np.dtype(input_dtype), np.integer)
    if integer_input and preprocess not in (None, Preprocess()):
        raise DataError(f"The model's input is {input_dtype} (ids or byte values): --scale/--offset/--mean/--std "
                        f"do not apply to it. Drop them and give the integer values as they are.")
    preprocess = preprocess or Preprocess()
    if spec is None:
        raise DataError(f"No {what} given.")
    if isinstance(spec, Dataset):
        ds = spec
    elif isinstance(spec, (str, Path)):
        ds = _load_path(Path(spec), input_shape, preprocess, what, layout)
    else:
        if isinstance(spec, dict):
            x, y = spec.get("x"), spec.get("y")
        elif isinstance(spec, tuple) and len(spec) == 2:
            x, y = spec
        else:
            x, y = spec, None
        if x is None:
            raise DataError(f"The {what} dict has no 'x' array.")
        x = _as_numeric(np.asarray(x), what)
        ds = Dataset(x, _labels(y, len(x), what), "array")
        if preprocess != Preprocess():
            ds.x = preprocess.apply(ds.x, is_image=False)
    if len(ds) == 0:
        raise DataError(f"The {what} ({ds.source}) holds no samples. Give at least one; "
                        f"for calibration a few hundred representative samples.")
    if input_shape is not None:
        ds.x = fit_to_input(ds.x, input_shape, ds.source, ds.notes, input_dtype)
    _check_finite(ds, what)
    return ds


def _check_finite(ds: Dataset, what: str) -> None:
    arrays = ds.x.arrays.items() if isinstance(ds.x, Inputs) else [(None, ds.x)]
    for name, a in arrays:
        if not np.all(np.isfinite(a)):
            where = f" input '{name}'" if name else ""
            raise DataError(f"The {what} ({ds.source}){where} contains NaN or infinite values; clean it first.")


def load_for(source, spec, *, preprocess: Preprocess | None = None, what: str = "data") -> Dataset:
    """Data for `source`: one array for a single-input model; for several inputs an Inputs holding every
    input, fixed values and (zero, until the source fills them) recurrent states included."""
    if not source.multi_input:
        return load_data(spec, input_shape=source.input_shape, input_dtype=source.input_dtype,
                         preprocess=preprocess, what=what, layout=source.layout)
    if isinstance(spec, Dataset):
        return spec
    if spec is None:
        raise DataError(f"No {what} given.")
    wanted = source.data_inputs
    preprocess = preprocess or Preprocess()
    images = [s for s in wanted if s.layout and not s.integer]
    processed = images or [s for s in wanted if not s.integer]
    is_npz = isinstance(spec, (str, Path)) and Path(spec).suffix.lower() == ".npz"
    by_name = wanted[0].name in (spec if isinstance(spec, dict) else _npz_keys(Path(spec)) if is_npz else ())
    if len(wanted) == 1 and not by_name:
        s = wanted[0]  # one data input beside fixed values and states: any single-input form
        ds = load_data(spec, input_shape=(None,) + s.sample_shape, input_dtype=s.dtype,
                       preprocess=preprocess if not s.integer else None, what=what, layout=s.layout)
        ds.x = complete(source, {s.name: ds.x}, len(ds.x), what)
        return ds
    arrays, y, where = _named(spec, [s.name for s in wanted], what)
    notes = []
    for s in wanted:
        a = _as_numeric(np.asarray(arrays[s.name]), f"{where} input '{s.name}'")
        if preprocess != Preprocess() and s in processed:
            a = preprocess.apply(a, is_image=False)
        arrays[s.name] = fit_to_input(a, (None,) + s.sample_shape, f"{where} input '{s.name}'", notes, s.dtype)
    if preprocess != Preprocess():
        notes.append("preprocessing applied to " + ", ".join(s.name for s in processed))
    n = len(next(iter(arrays.values())))
    ds = Dataset(complete(source, arrays, n, what), _labels(y, n, where), where, notes=notes)
    if len(ds) == 0:
        raise DataError(f"The {what} ({where}) holds no samples.")
    _check_finite(ds, what)
    return ds


def sample_shapes(spec) -> dict:
    """{input name, or None for a lone unnamed array: one sample's shape} of data given as an array, an
    (x, y) tuple, a dict by name, an .npy or an .npz, read from the headers where it can; {} for what says
    nothing about sizes (an image folder, a callable) or cannot be read (loading says why later). A model
    with dynamic sizes is built for the sizes its data has."""
    def one(a):
        return tuple(int(d) for d in np.shape(a)[1:]) if np.ndim(a) >= 1 else None
    try:
        if isinstance(spec, (str, Path)):
            path = Path(spec)
            if path.suffix.lower() == ".npy" and path.is_file():
                return {None: tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape[1:])}
            if path.suffix.lower() == ".npz" and path.is_file():
                import zipfile
                out = {}
                with zipfile.ZipFile(path) as z:
                    for info in z.infolist():
                        if not info.filename.endswith(".npy"):
                            continue
                        with z.open(info) as f:
                            fmt = np.lib.format
                            read = fmt.read_array_header_1_0 if fmt.read_magic(f)[0] == 1 else fmt.read_array_header_2_0
                            shape = read(f)[0]
                        out[info.filename[:-4]] = tuple(int(d) for d in shape[1:])
                x = out.pop("x", None)
                out.pop("y", None)
                return {None: x} if x is not None else out
            return {}
        if isinstance(spec, np.ndarray):
            return {None: one(spec)}
        if isinstance(spec, dict):
            return {k: one(v) for k, v in spec.items() if k != "y" and isinstance(v, np.ndarray)}
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], np.ndarray):
            return {None: one(spec[0])}
    except Exception:
        return {}
    return {}


def _npz_keys(path: Path) -> list:
    try:
        with np.load(path, allow_pickle=False) as f:
            return list(f.keys())
    except Exception:
        return []


def _named(spec, names: list, what: str) -> tuple:
    """({input name: array}, labels or None, where it came from) from an .npz, a dict or a tuple."""
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_file() or path.suffix.lower() != ".npz":
            raise DataError(f"The {what} '{spec}': a model with several inputs ({', '.join(names)}) takes an "
                            f".npz with one array per input name (numpy.savez(path, {names[0]}=..., "
                            f"{names[1]}=..., y=labels)).")
        try:
            with np.load(path, allow_pickle=False) as f:
                spec = {k: f[k] for k in f.keys()}
        except Exception as exc:
            raise DataError(f"{path}: cannot read it as plain numpy data ({first_line(exc)[:200]}).") from None
        where = str(path)
    else:
        where = "array"
    if isinstance(spec, (tuple, list)):
        if len(spec) == 2 and isinstance(spec[0], (tuple, list, dict)):  # (inputs, labels)
            inputs, y = spec
        else:
            inputs, y = spec, None
        if isinstance(inputs, dict):
            spec = {**inputs, **({"y": y} if y is not None else {})}
        else:
            if len(inputs) != len(names):
                raise DataError(f"The {what} gives {len(inputs)} arrays; the model takes {len(names)} inputs "
                                f"from data ({', '.join(names)}), in that order.")
            spec = {**dict(zip(names, inputs)), **({"y": y} if y is not None else {})}
    if not isinstance(spec, dict):
        raise DataError(f"A model with several inputs ({', '.join(names)}) takes its {what} as an .npz or dict "
                        f"with one array per input name, or a tuple of arrays in that order; got "
                        f"{type(spec).__name__}.")
    missing = [n for n in names if n not in spec]
    if missing:
        raise DataError(f"The {what} ({where}) has no array for the input '{missing[0]}' (it has: "
                        f"{', '.join(map(str, spec)) or 'nothing'}). Give one array per input: "
                        f"{', '.join(names)} (and 'y' for labels); or, if '{missing[0]}' always takes one value, "
                        f"--input-value {missing[0]}=VALUE; if it is a recurrent state, --stateful "
                        f"{missing[0]}=OUTPUT.")
    return {n: spec[n] for n in names}, spec.get("y"), where


def _as_numeric(x: np.ndarray, source: str) -> np.ndarray:
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) \
            or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{source}: expected a numeric array, got dtype {x.dtype}. "
                        f"Convert it to float32 (or uint8 pixels) first.")
    return x


def _load_path(path: Path, input_shape, preprocess: Preprocess, what: str, layout=None) -> Dataset:
    if not path.exists():
        raise DataError(f"The {what} path '{path}' does not exist.")
    if path.is_dir():
        four = input_shape is not None and len(input_shape) == 4
        nchw = four and layout == "NCHW"
        hw = (tuple(input_shape[2:4]) if nchw else tuple(input_shape[1:3])) if four else None
        channels = (input_shape[1] if nchw else input_shape[-1]) if four else 3
        ds = _load_images(path, hw, channels or 3, preprocess)
        if nchw:  # images load channels-last; this model takes channels-first
            ds.x = np.ascontiguousarray(ds.x.transpose(0, 3, 1, 2))
        return ds
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise DataError(f"{path}: unsupported {what} file type '{suffix}'. Use an .npz with 'x' "
                        f"(and optional 'y'), an .npy, or a folder of images.")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: holds Python objects ({exc}); edgesdk does not unpickle data. "
                        f"Save plain numeric arrays with numpy.savez.") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot read it as numpy data ({exc}).") from None
    if suffix == ".npz":
        with loaded:
            keys = list(loaded.keys())
            if "x" not in keys:
                raise DataError(f"{path}: no array named 'x' (found: {', '.join(keys) or 'none'}). "
                                f"Save it as numpy.savez(path, x=inputs, y=labels).")
            try:  # an .npz reads each array when it is asked for: a pickled one fails here
                x = loaded["x"]
                y = loaded["y"] if "y" in keys else None
            except ValueError as exc:
                raise DataError(f"{path}: holds Python objects ({first_line(exc)}); edgesdk does not unpickle "
                                f"data. Save plain numeric arrays with numpy.savez.") from None
    else:
        x, y = loaded, None
    x = _as_numeric(x, str(path))
    ds = Dataset(x, _labels(y, len(x), str(path)), str(path))
    if preprocess != Preprocess():
        ds.x = preprocess.apply(ds.x, is_image=False)
    return ds


def fit_to_input(x: np.ndarray, input_shape, source: str, notes: list, input_dtype: str = "float32") -> np.ndarray:
    """Check x against the model's input shape (batch first, None = any) and give it the input's dtype."""
    want = tuple(input_shape)
    if x.ndim == len(want) - 1 and want[-1] == 1 and _dims_match(x.shape[1:], want[1:-1]):
        notes.append(f"added a channel axis: {x.shape} -> {x.shape + (1,)}")
        x = x[..., None]
    if x.ndim != len(want) or not _dims_match(x.shape[1:], want[1:]):
        shown = "(N, " + ", ".join("?" if d is None else str(d) for d in want[1:]) + ")"
        hint = ""
        if x.ndim == 4 and len(want) == 4 and _dims_match((x.shape[2], x.shape[3], x.shape[1]), want[1:]):
            hint = " It looks channels-first (NCHW); this model takes channels-last (NHWC): " \
                   "transpose it with x.transpose(0, 2, 3, 1)."
        elif x.ndim == 4 and len(want) == 4 and _dims_match((x.shape[3], x.shape[1], x.shape[2]), want[1:]):
            hint = " It looks channels-last (NHWC); this model takes channels-first (NCHW): " \
                   "transpose it with x.transpose(0, 3, 1, 2)."
        raise DataError(f"{source}: samples have shape {x.shape}, but the model takes {shown}.{hint}")
    want_dtype = np.dtype(input_dtype)
    if np.issubdtype(want_dtype, np.integer):
        if not np.issubdtype(x.dtype, np.integer) and not (np.all(np.isfinite(x)) and np.all(x == np.round(x))):
            raise DataError(f"{source}: the model's input is {want_dtype} (ids or byte values) but the data holds "
                            f"fractional {x.dtype} values; give the integer values the model takes.")
        info = np.iinfo(want_dtype)
        if x.size and (x.min() < info.min or x.max() > info.max):
            raise DataError(f"{source}: values {x.min()}..{x.max()} do not fit the model's {want_dtype} input.")
        return x.astype(want_dtype)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    return x


def _dims_match(have, want) -> bool:
    return len(have) == len(want) and all(w is None or h == w for h, w in zip(have, want))


def split_holdout(ds: Dataset, fraction: float = 0.2, seed: int = 0, contiguous: bool = False):
    """Stratified-by-shuffle split: (calibration, validation). `contiguous` (a sequence, for a stateful
    model) keeps the order: the last part is validation."""
    n = len(ds)
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 1:
        raise DataError(f"{ds.source}: {n} sample(s) is too few to hold out validation data; "
                        f"give --validation DATA or more calibration data.")
    if contiguous:
        return ds.subset(np.arange(n - n_val)), ds.subset(np.arange(n - n_val, n))
    order = np.random.default_rng(seed).permutation(n)
    return ds.subset(order[n_val:]), ds.subset(order[:n_val])


def data_fingerprint(ds: Dataset) -> str:
    import hashlib
    h = hashlib.sha256()

    def add(a):  # the array's bytes read in place: a copy of 200 photos (tobytes) took 0.3 s a fingerprint
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    for name, a in (ds.x.items() if isinstance(ds.x, Inputs) else [("", ds.x)]):
        h.update(f"{name}{a.shape}{a.dtype}".encode())
        add(a)
    if ds.y is not None:
        add(ds.y)
    for b in ds.boxes or ():
        add(b)
    return h.hexdigest()


def artifact_layout(source_layout, recipe_layout):
    """The layout an artifact takes: the recipe's for image models, unless it keeps the source's."""
    if source_layout is None or recipe_layout == "source":
        return source_layout
    return recipe_layout


def to_artifact_layout(x: np.ndarray, source_layout, artifact_layout) -> np.ndarray:
    """Data arrives in the source model's layout; an NHWC artifact of an NCHW model takes it transposed."""
    if source_layout == "NCHW" and artifact_layout == "NHWC" and x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def representative(ds: Dataset, n: int, seed: int = 0) -> tuple:
    """At most n samples drawn across the whole dataset, and how they were drawn.

    Data often arrives sorted (an image folder class by class): a prefix could
    hold one class only. With labels each class gets its share (stratified);
    without, a seeded shuffle.
    """
    if len(ds) <= n:
        return ds, f"all {len(ds)} samples"
    rng = np.random.default_rng(seed)
    if ds.y is None:
        return ds.subset(np.sort(rng.permutation(len(ds))[:n])), f"{n} of {len(ds)} by seeded shuffle (seed {seed})"
    classes = np.unique(ds.y)
    pools = [list(rng.permutation(np.flatnonzero(ds.y == c))) for c in classes]
    picked = []
    while len(picked) < n:  # round-robin over classes keeps every class's share
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(pool.pop())
    return (ds.subset(np.sort(np.asarray(picked))),
            f"{n} of {len(ds)} stratified by label across {len(classes)} classes (seed {seed})")
