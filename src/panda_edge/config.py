"""Model configurations: the presets and the reading/writing of official `config.json` files.

Field meanings follow the official Video-Panda repository (jh-yi/Video-Panda): the LLM part is a
Llama `config.json`, the video tower's geometry lives in a `preprocessor_config.json` that the
released checkpoint names by a folder of the official repository (`mm_video_tower`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from panda_edge.errors import CheckpointError

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
MODEL_TYPE = "videopanda"

# The released checkpoint names its tower by this folder of the official repository; a downloaded
# checkpoint does not carry the folder, so its values are known here.
OFFICIAL_VIDEO_TOWER = "videopanda/config/videopanda-video-LB-patch14-anypixel-448"
KNOWN_PREPROCESSORS: dict[str, dict[str, int]] = {
    "videopanda-video-LB-patch14-anypixel-448": {
        "num_frames": 4,
        "image_size": 448,
        "patch_stride": 14,
        "conv_stride": 2,
        "image_size_teacher": 224,
        "patch_stride_teacher": 14,
        "all_num_frames": 8,
    },
}
# The official VideoTokenizer picks the GSTRA head count from the width.
OFFICIAL_DEC_HEADS = {1024: 8, 1152: 8, 1408: 11}

# CLIP normalization used by the LanguageBind video processor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionConfig:
    """STAB geometry and widths (official `preprocessor_config.json` + `video_hidden_size`)."""

    width: int = 1024
    patch: int = 14
    image_size: int = 448
    conv_stride: int = 2  # LSD window
    chunk_frames: int = 4  # frames per GSTRA chunk (`num_frames`, CHUNK_SIZE)
    video_frames: int = 8  # frames per video (`all_num_frames`, NUM_FRAMES)
    image_size_teacher: int = 224  # the resize geometry is computed at this size, then scaled
    patch_teacher: int = 14
    dec_heads: int = 8  # GSTRA cross-attention heads
    attn_heads: int = 8  # LSD and FSRA heads
    mlp_factor: float = 4.0
    dw_reduction: float = 1.5
    pad_frame_patches: int = 16  # an all-padding frame keeps this many top-left patches per side

    @property
    def grid(self) -> int:
        """Patches per side of the square input."""
        return self.image_size // self.patch

    @property
    def lmhra_width(self) -> int:
        return int(self.width // self.dw_reduction)


@dataclass(frozen=True)
class LlmConfig:
    """The Llama backbone (field names of transformers' LlamaConfig)."""

    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    vocab_size: int = 32000
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    projector_type: str = "mlp2x_gelu"
    video_tower: str = OFFICIAL_VIDEO_TOWER
    name: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, ModelConfig] = {
    # Released Video-Panda-7B.
    "full": ModelConfig(name="full"),
    # Tests, the demo and the embedded default: small STAB and image, a 2-layer Llama 128 wide. Narrow and
    # shallow on purpose: trained from scratch in 5 minutes on 2 cores, accuracy is set by how many steps
    # fit (train/recipe.py), and a 4-layer, 256-wide Llama takes 3.4x as long per step.
    "tiny": ModelConfig(
        name="tiny",
        vision=VisionConfig(width=128, image_size=112, image_size_teacher=56),
        llm=LlmConfig(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=512,
            max_position_embeddings=2048,
        ),
        video_tower="panda-edge/tiny-video-tower",
    ),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise CheckpointError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}") from None


# --- official config.json <-> ModelConfig -----------------------------------------------------------

_LLM_KEYS = [f for f in LlmConfig.__dataclass_fields__]


def _preprocessor_values(directory: Path, tower: str) -> dict[str, int]:
    local = directory / PREPROCESSOR_FILE
    if local.is_file():
        return _read_json(local)
    known = KNOWN_PREPROCESSORS.get(Path(tower).name)
    if known is None:
        raise CheckpointError(
            f"{directory}: no {PREPROCESSOR_FILE} and the video tower '{tower}' is not one panda-edge "
            f"knows; place the tower's {PREPROCESSOR_FILE} next to {CONFIG_FILE}"
        )
    return known


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from None


def read_config(directory: str | Path) -> ModelConfig:
    """Read an official (or panda-edge written) checkpoint's `config.json` + preprocessor config."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}; is this a Video-Panda checkpoint directory?")
    raw = _read_json(path)
    tower = raw.get("mm_video_tower")
    if not tower:
        raise CheckpointError(f"{path}: no 'mm_video_tower'; this is not a Video-Panda config")
    pre = _preprocessor_values(directory, tower)
    width = int(raw.get("video_hidden_size") or raw.get("mm_hidden_size") or 1024)
    dec_heads = raw.get("video_tower_num_heads") or OFFICIAL_DEC_HEADS.get(width)
    if dec_heads is None:
        raise CheckpointError(f"{path}: video width {width} needs 'video_tower_num_heads' in the config")
    vision = VisionConfig(
        width=width,
        patch=int(pre["patch_stride"]),
        image_size=int(pre["image_size"]),
        conv_stride=int(pre["conv_stride"]),
        chunk_frames=int(pre["num_frames"]),
        video_frames=int(pre.get("all_num_frames", 8)),
        image_size_teacher=int(pre["image_size_teacher"]),
        patch_teacher=int(pre["patch_stride_teacher"]),
        dec_heads=int(dec_heads),
    )
    llm_values = {k: raw[k] for k in _LLM_KEYS if raw.get(k) is not None}
    llm_values.setdefault("num_key_value_heads", llm_values.get("num_attention_heads", 32))
    llm = replace(LlmConfig(), **llm_values)
    projector = raw.get("mm_projector_type", "linear")
    return ModelConfig(
        vision=vision,
        llm=llm,
        projector_type=projector,
        video_tower=tower,
        name=raw.get("_panda_preset", "custom"),
    )


def official_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The `config.json` the official code reads, for this configuration."""
    v, llm = config.vision, config.llm
    out: dict[str, Any] = {
        "architectures": ["VideoPandaLlamaForCausalLM"],
        "model_type": MODEL_TYPE,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        **asdict(llm),
        "mm_hidden_size": v.width,
        "video_hidden_size": v.width,
        "mm_projector_type": config.projector_type,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_video_tower": config.video_tower,
        "requires_video_distill": False,
        "requires_image_distill": False,
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
        "_panda_preset": config.name,
    }
    if OFFICIAL_DEC_HEADS.get(v.width) != v.dec_heads:
        out["video_tower_num_heads"] = v.dec_heads
    return out


def preprocessor_dict(vision: VisionConfig) -> dict[str, int]:
    return {
        "num_frames": vision.chunk_frames,
        "image_size": vision.image_size,
        "patch_stride": vision.patch,
        "conv_stride": vision.conv_stride,
        "image_size_teacher": vision.image_size_teacher,
        "patch_stride_teacher": vision.patch_teacher,
        "all_num_frames": vision.video_frames,
    }
