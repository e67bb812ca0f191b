"""An exported inference bundle: loading and running it (`inference`), and its command lines (`cli`)."""
