"""The exposition wing: pure bytes in, bytes out; reads, relabels, merges and renders."""
