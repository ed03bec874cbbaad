"""The recurrent half of DARTS: PTB-style recurrent cells searched, derived, trained as language models, exported.

Each module has one job (docs/recurrent.md):
    space      the Python description of a recurrent space / derived cell and the Genotype form
    cell       the cells (derived and search supernet) and the language model around them
    corpus     the data: `ptb:PATH` and the embedded corpus, batchified for truncated BPTT
    architect  the DARTS architecture step (first / second order) and the weight step with a carried state
    search     the search job (outputs, checkpoints, resume)
    train      language-model training (SGD, then averaged SGD) reporting perplexity
    export     generated PyTorch source, TorchScript and ONNX of the language model, parity checks
    info       parameters, MACs per token and cell depth
    lower      the IR (`cell ... recurrent`, `network ... language_model`) to the description above
"""
