"""Quantization-aware training for tf-keras models: the recovery ladder's training rung.

tensorflow-model-optimization wraps each layer in fake quantization (int8
weights per channel, int8 activations with learned ranges) and the model is
fine-tuned on labelled data, with the float source as its teacher under
--distill; the TFLite converter then takes the ranges the training learned.
A pruned model keeps its zeros (tfmot's prune-preserving scheme). Keras 3
models (tfmot does not support them) and subclassed models are not wrapped:
`unavailable` says why, before anything is trained.
"""

from __future__ import annotations

from edgesdk.errors import ConversionError, DataError
from edgesdk.util import first_line


def unavailable(source) -> str | None:
    """Why this source cannot be trained quantization-aware here, or None when it can."""
    if source.flavor != "tf-keras":
        return (f"quantization-aware training takes tf-keras models (tfmot does not support "
                f"{'Keras 3' if source.flavor == 'keras3' else 'a plain SavedModel'}); save the model with "
                f"tf-keras to have it")
    if source.multi_input:
        return "quantization-aware training takes single-input models"
    from .keras_prune import _tfmot_can_wrap
    if not _tfmot_can_wrap(source.model):
        return "quantization-aware training takes Sequential or functional models, not subclassed ones"
    return None


def train(source, data, recipe, teacher=None):
    """Fine-tune `source.model` quantization-aware on `data` (labelled); returns (the trained model, a record).

    The source's own model is left as it was (tfmot clones it). teacher: the float source's outputs on
    data.x, for a model pruned since (else, with recipe.distill, the model itself teaches).
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras as K
    from .keras_prune import _from_logits, _targets, seeded
    if data.y is None:
        raise DataError(f"Fine-tuning data ({data.source}) has no labels; give an .npz with 'y' or a folder "
                        f"with class subfolders.")
    y, loss, taught = _targets(source, data, _from_logits(source, data), K, recipe.distill, teacher)
    quantize = tfmot.quantization.keras
    try:
        annotated = quantize.quantize_annotate_model(source.model)
        # pruned: the zeros stay zeros through training and into the int8 kernels
        model = (quantize.quantize_apply(annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
                 if recipe.sparsity else quantize.quantize_apply(annotated))
    except (ValueError, RuntimeError, TypeError) as exc:  # a layer tfmot has no quantization config for
        raise ConversionError(f"tfmot cannot make this model quantization-aware: {first_line(exc)[:300]}") from None
    model.compile(optimizer=K.optimizers.Adam(recipe.learning_rate), loss=loss)
    seeded()
    model.fit(data.x, y, epochs=recipe.epochs, batch_size=recipe.batch_size, verbose=0, shuffle=True)
    return model, {"method": "tfmot quantization-aware training" + (", pruning preserved" if recipe.sparsity else ""),
                   "epochs": recipe.epochs, "samples": len(data), "learning_rate": recipe.learning_rate,
                   "teacher": taught}
