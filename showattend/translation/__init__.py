"""Attention seq2seq translation on the shared attention core (Bahdanau et al. 2015; Luong et al. 2015)."""
