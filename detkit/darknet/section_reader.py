"""The cfg key vocabulary and typed access to one section's options.

Per section type: the keys detkit uses (``*_USED``), the darknet keys it accepts and ignores
(``*_KNOWN``) and the keys accepted only at their neutral value (``*_NEUTRAL``); the activations
detkit implements. :class:`SectionReader` turns raw option strings into typed values with file:line errors
and warns about unknown or duplicate keys. Used by the parser (:mod:`detkit.darknet.specs`) and the
cfg editor (:mod:`detkit.darknet.cfg_edit`).
"""
from __future__ import annotations

import difflib
import logging

from detkit.darknet.cfg import Section
from detkit.errors import CfgError

log = logging.getLogger("detkit.darknet.specs")  # key warnings keep the parser's logger name

ACTIVATIONS = (
    "leaky", "linear", "logistic", "relu", "mish", "swish", "hard_mish", "elu", "selu", "gelu", "relie",
    "ramp", "tanh", "plse", "lhtan", "stair", "hardtan", "loggy", "relu6", "revleaky",
)
# darknet activations that detkit does not implement (a clear error beats a silent wrong forward):
# channel-normalising activations used only by darknet's contrastive / classifier experiments
OTHER_DARKNET_ACTIVATIONS = (
    "normalize_channels", "normalize_channels_softmax", "normalize_channels_softmax_maxval",
)

# -- keys ---------------------------------------------------------------------------------
NET_USED = {
    "width", "height", "channels", "batch", "subdivisions", "learning_rate", "momentum", "decay",
    "burn_in", "power", "max_batches", "policy", "steps", "scales", "angle", "saturation",
    "exposure", "hue", "flip", "mosaic", "letter_box", "gamma", "step",
}
NET_KNOWN = {
    "inputs", "max_crop", "min_crop", "aspect", "center", "time_steps", "notruth", "random",
    "track", "augment_speed", "sequential_subdivisions", "init_sequential_subdivisions",
    "try_fix_nan", "loss_scale", "dynamic_minibatch", "optimized_memory", "workspace_size_limit_mb",
    "workspace_size_limit_MB", "adam", "B1", "B2", "eps", "scale", "exp", "max_chart_loss",
    "mixup", "cutmix", "blur", "gaussian_noise", "label_smooth_eps", "resize_step", "attention",
    "adversarial_lr", "contrastive", "contrastive_jit_flip", "contrastive_color", "unsupervised",
    "ema_alpha", "equidistant_point", "num_sigmas_reject_badlabels",
    "badlabels_rejection_percentage", "weights_reject_freq", "show_receptive_field",
    "mosaic_bound", "cudnn_half", "use_cuda_graph", "seq_scales", "rgb", "hierarchy",
    "max_batches_per_epoch", "min_iter", "stopbackward", "flip_scale", "pyramid", "blur_step",
}
CONV_USED = {"filters", "size", "stride", "pad", "padding", "groups", "batch_normalize", "activation", "dilation",
             "stride_x", "stride_y", "share_index"}
CONV_KNOWN = {
    "binary", "xnor", "bin_output", "flipped", "dot", "antialiasing", "assisted_excitation",
    "stretch", "stretch_sway", "sway", "rotate", "deform",
    "learning_rate", "stopbackward", "dontload", "dontloadscales", "train_only_bn", "coordconv",
    "cbn", "train", "shortcut", "out_channels", "angle",
}
# keys that change the network's maths; accepted by the parser only at their neutral value
CONV_NEUTRAL = {"binary": 0, "xnor": 0, "antialiasing": 0, "deform": 0, "coordconv": 0, "sway": 0,
                "rotate": 0, "stretch": 0, "stretch_sway": 0, "assisted_excitation": 0}
MAXPOOL_USED = {"size", "stride", "padding", "stride_x", "stride_y"}
MAXPOOL_KNOWN = {"maxpool_depth", "out_channels", "antialiasing", "stopbackward", "train_only_bn",
                 "maxpool_zero_nonmax"}
MAXPOOL_NEUTRAL = {"maxpool_depth": 0, "antialiasing": 0}
UPSAMPLE_USED = {"stride", "scale"}
UPSAMPLE_KNOWN = {"stopbackward"}
ROUTE_USED = {"layers", "groups", "group_id"}
ROUTE_KNOWN = {"stopbackward", "train_only_bn", "onlyforward"}
SHORTCUT_USED = {"from", "activation", "weights_type", "weights_normalization"}
SHORTCUT_KNOWN = {"stopbackward", "train_only_bn"}
SAM_USED = {"from", "activation"}
SCALE_CHANNELS_USED = {"from", "activation", "scale_wh"}
FROM_KNOWN = {"stopbackward", "train_only_bn"}
REORG_USED = {"stride", "reverse"}
REORG_KNOWN = {"stopbackward", "flatten", "extra"}
AVGPOOL_USED: set[str] = set()
AVGPOOL_KNOWN = {"stopbackward"}
LOCAL_AVGPOOL_USED = {"size", "stride", "padding", "stride_x", "stride_y"}
DROPOUT_USED = {"probability"}
DROPOUT_KNOWN = {"dropblock", "dropblock_size_rel", "dropblock_size_abs", "stopbackward"}
REGION_USED = {"anchors", "classes", "num", "coords", "softmax", "bias_match", "jitter", "thresh",
               "object_scale", "noobject_scale", "class_scale", "coord_scale", "rescore", "absolute", "random",
               "tree", "map", "log", "sqrt", "background", "max"}
REGION_KNOWN = {"focal_loss", "stopbackward"}
YOLO_USED = {"mask", "anchors", "classes", "num", "jitter", "ignore_thresh", "truth_thresh", "scale_x_y",
             "random", "iou_loss", "iou_normalizer", "cls_normalizer", "obj_normalizer", "label_smooth_eps",
             "max", "new_coords", "beta_nms", "nms_kind", "objectness_smooth", "iou_thresh", "max_delta"}
YOLO_KNOWN = {
    "beta1", "counters_per_class", "resize", "focal_loss",
    "objectness_smooth", "map", "embedding_layer", "track_history_size", "uc_normalizer",
    "delta_normalizer", "stopbackward", "show_details", "track_ciou_norm", "sim_thresh",
    "dets_for_track", "dets_for_show", "bilinear", "rescore", "absolute", "thresh", "coords",
    "softmax", "background", "train_only_bn",
}


# -- value readers ------------------------------------------------------------------------
class SectionReader:
    """Typed access to one section's options, with file:line errors and unused-key warnings."""

    def __init__(self, section: Section, used: set[str], known: set[str], *, warn: bool = True):
        self.s = section
        self.used = used
        self.known = known
        if warn:
            self._warn_keys(section, used, known)

    @staticmethod
    def _warn_keys(section: Section, used: set[str], known: set[str]) -> None:
        seen: set[str] = set()
        for opt in section.options:
            if opt.key in seen:
                log.warning("%s:%d: duplicate key %r in [%s]; darknet uses the first one",
                            section.source, opt.line, opt.key, section.type)
            seen.add(opt.key)
            if opt.key not in used and opt.key not in known:
                hint = difflib.get_close_matches(opt.key, sorted(used | known), n=1, cutoff=0.6)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                log.warning("%s:%d: unknown key %r in [%s] ignored%s",
                            section.source, opt.line, opt.key, section.type, extra)

    def error(self, key: str, message: str) -> CfgError:
        opt = self.s.get(key)
        return CfgError(message, path=self.s.source, line=opt.line if opt else self.s.line)

    def _raw(self, key: str) -> str | None:
        opt = self.s.get(key)
        return None if opt is None else opt.value

    def int(self, key: str, default: int | None = None, *, minimum: int | None = None) -> int:
        raw = self._raw(key)
        if raw is None:
            if default is None:
                raise self.error(key, f"[{self.s.type}] needs {key}=")
            return default
        try:
            value = int(raw)
        except ValueError:
            raise self.error(key, f"bad value {key}={raw!r} (expected an integer)") from None
        if minimum is not None and value < minimum:
            raise self.error(key, f"bad value {key}={raw!r} (must be >= {minimum})")
        return value

    def float(self, key: str, default: float) -> float:
        raw = self._raw(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self.error(key, f"bad value {key}={raw!r} (expected a number)") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise self.error(key, f"bad value {key}={raw!r} (must be finite)")
        return value

    def flag(self, key: str, default: bool) -> bool:
        return self.int(key, int(default)) != 0

    def str(self, key: str, default: str) -> str:
        raw = self._raw(key)
        return default if raw is None or raw == "" else raw

    def ints(self, key: str) -> tuple[int, ...] | None:
        raw = self._raw(key)
        if raw is None:
            return None
        try:
            return tuple(int(tok) for tok in raw.split(",") if tok.strip())
        except ValueError:
            raise self.error(key, f"bad value {key}={raw!r} (expected comma-separated integers)") from None

    def floats(self, key: str) -> tuple[float, ...] | None:
        raw = self._raw(key)
        if raw is None:
            return None
        try:
            return tuple(float(tok) for tok in raw.split(",") if tok.strip())
        except ValueError:
            raise self.error(key, f"bad value {key}={raw!r} (expected comma-separated numbers)") from None

    def activation(self, key: str = "activation", default: str = "logistic") -> str:
        name = self.str(key, default)
        if name not in ACTIVATIONS:
            why = "not supported by detkit" if name in OTHER_DARKNET_ACTIVATIONS else "unknown"
            raise self.error(key, f"{why} activation {name!r} (supported: {', '.join(ACTIVATIONS)})")
        return name

    def neutral(self, rules: dict[str, int]) -> None:
        for key, neutral in rules.items():
            if self._raw(key) is not None and self.int(key) != neutral:
                raise self.error(key, f"{key}={self._raw(key)} in [{self.s.type}] is not supported by detkit")

