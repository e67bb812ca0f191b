"""An exported inference bundle: loading and running it (`inference`: `load`,
`Tokenizer`, `BundleError`), and its command lines (`cli`: sgc-tokenize,
sgc-detokenize, sgc-segment)."""
