"""Quantization-aware training for Keras models (--qat, and the recovery ladder's training rung).

tensorflow-model-optimization wraps each layer in fake quantization (int8
weights per channel, int8 activations with learned ranges) and the model is
fine-tuned on labelled data, with the float source as its teacher under
--distill; the TFLite converter then takes the ranges the training learned.
A pruned model keeps its zeros (tfmot's prune-preserving scheme). tfmot wraps
tf-keras layers only: a Keras 3 model (Sequential or functional, built-in
layers) is rebuilt in tf-keras with its weights and checked to compute the
same before it trains. Subclassed models are not wrapped: `unavailable` says
why, before anything is trained.
"""

from __future__ import annotations

from edgesdk.errors import ConversionError
from edgesdk.util import first_line


def unavailable(source) -> str | None:
    """Why this source cannot be trained quantization-aware here, or None when it can."""
    if source.flavor == "saved_model":
        return ("quantization-aware training takes Keras models, not a plain SavedModel; give the .keras or .h5 "
                "file it came from")
    if source.multi_input:
        return "quantization-aware training takes single-input models"
    from .keras_prune import _tfmot_can_wrap
    if not (_tfmot_can_wrap(source.model) if source.flavor == "tf-keras" else _graph_model(source.model)):
        return "quantization-aware training takes Sequential or functional models, not subclassed ones"
    return None


def _graph_model(model) -> bool:
    import keras
    return isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"


# Keras 3 layer arguments that only shape training from scratch; the rebuilt layer takes tf-keras's defaults
_TRAINING_ONLY = ("initializer", "regularizer", "constraint", "seed")


def _as_tf_keras(model):
    """The same Keras 3 model (Sequential or functional, built-in layers) rebuilt in tf-keras, weights and all,
    since tfmot wraps tf-keras layers only. A layer tf-keras has no twin for is an error that names it."""
    import inspect
    import keras
    import tf_keras as K
    made = {}

    def twin(layer):
        if id(layer) in made:
            return made[id(layer)]
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        cls = getattr(K.layers, type(layer).__name__, None)
        if cls is None or type(layer).__module__.split(".")[0] != "keras":
            raise ConversionError(f"quantization-aware training rebuilds Keras 3 models in tf-keras (tfmot wraps "
                                  f"only those), and layer '{layer.name}' ({type(layer).__name__}) has no tf-keras "
                                  f"twin")
        accepted = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable"}
        config = {k: v for k, v in layer.get_config().items()
                  if k in accepted and not any(k.endswith(t) for t in _TRAINING_ONLY)}
        config["dtype"] = getattr(layer.dtype_policy, "name", "float32")
        made[id(layer)] = cls(**config)
        return made[id(layer)]

    inputs = [K.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=t.name.split(":")[0]) for t in model.inputs]
    if isinstance(model, keras.Sequential):
        x = inputs[0]
        for layer in model.layers:
            x = twin(layer)(x)
        outputs = x
    else:  # replays the functional graph with each layer's twin
        outputs = model._run_through_graph(inputs if len(inputs) > 1 else inputs[0], operation_fn=twin)
    rebuilt = K.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=model.name)
    for layer in model.layers:
        if id(layer) in made:
            made[id(layer)].set_weights(layer.get_weights())
    return rebuilt


def train(source, data, recipe, teacher=None):
    """Fine-tune `source.model` quantization-aware on `data` (labelled: conversion checks, before anything runs);
    returns (the trained model, a record).

    The source's own model is left as it was (tfmot clones it). teacher: the float source's outputs on
    data.x, for a model pruned since (else, with recipe.distill, the model itself teaches).
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras as K
    from .keras_prune import _from_logits, _targets, seeded
    y, loss, taught = _targets(source, data, _from_logits(source, data), K, recipe.distill, teacher)
    quantize = tfmot.quantization.keras
    try:
        model = source.model if source.flavor == "tf-keras" else _rebuilt(source, data)
        annotated = quantize.quantize_annotate_model(model)
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


def _rebuilt(source, data):
    """The Keras 3 source as tf-keras, checked to compute what the source does."""
    import numpy as np
    try:
        model = _as_tf_keras(source.model)
    except ConversionError:
        raise
    except Exception as exc:  # a layer whose Keras 3 arguments tf-keras does not take
        raise ConversionError(f"quantization-aware training could not rebuild this Keras 3 model in tf-keras "
                              f"(tfmot wraps only those): {first_line(exc)[:300]}") from None
    x = data.x[:32]
    want = source.predict(x)[0]
    got = np.asarray(model(x, training=False))
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-4 * (np.abs(want).max() + 1e-12)):
        raise ConversionError("quantization-aware training rebuilt this Keras 3 model in tf-keras (tfmot wraps only "
                              "those), and the rebuilt model computes something else; save the model with tf-keras "
                              "to train it.")
    return model
