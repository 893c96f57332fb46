"""Hotword-biased non-autoregressive ASR in the SeACo-Paraformer design, with FunASR's module names.

`model` (encoder, predictor, decoder, bias_encoder, seaco_decoder, hotword_output_layer, ctc), `cif` (continuous
integrate-and-fire), `vocab` (characters), `data` (FunASR JSONL, hotword sampling), `trainer` (stages through the
shared `Trainer`), `infer` (decoding with a hotword list), `metrics` (CER/WER, hotword recall/precision, B/U-WER),
`corpus` (a generated English hotword corpus).
"""
