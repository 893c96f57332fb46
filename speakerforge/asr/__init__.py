"""Hotword-biased non-autoregressive ASR: FunASR's SeACo-Paraformer and ContextualParaformer, natively.

Networks with FunASR's parameter names and shapes (`sanm`, `cif`, `cif_predictor`, `paraformer_base`, `paraformer`),
its frontend (`funasr_frontend`), model directories (`funasr_dir`: read, decode, write), new models from a
`config.yaml` (`funasr_new`), losses (`funasr_losses`); `data` (FunASR JSONL, hotword sampling), `trainer` (stages
through the shared engine), `decoding` / `context` / `infer` (FunASR's decoding or CTC with a context graph, and
`asr eval`), `metrics` (CER/WER, hotword recall/precision, B/U-WER), `corpus` (a generated English hotword corpus).
"""
