"""Export what was trained: merged HF checkpoints, int8 CPU models, GGUF files, model cards.

    source.py     what is being exported (run dir, checkpoint, adapter, classifier)
    merge.py      LoRA merged into its base in full precision; ``merge_to_dir``
    quantize.py   weight-only int8 (per channel) + dynamic activation quantization, reloadable
    gguf.py       GGUF writer for Llama-architecture models (f16, q8_0, q4_0 ...)
    gguf_vocab.py the tokenizer, special ids and chat template as GGUF metadata
    modelfile.py  the Ollama Modelfile (the chat template translated to a Go template)
    measure.py    size on disk, speed, metric change on an evaluation file
    card.py       the README.md model card every export carries
    run.py        ``export(...)``: the steps above in order; cli.py: ``tunesmith export``
"""
