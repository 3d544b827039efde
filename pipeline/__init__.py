"""Reusable parts the stages compose, in packages whose imports run one way (each imports only
those listed before it, and storage):

    config      what a user chooses: choices, each option's one definition, the option groups
    runtime     the process a stage runs in: device, precision, torchrun's ranks, the watchdog, the workspace
    sources     data sets on disk: shards, manifests, the registry, noisy labels, archives
    image       an image from bytes to the model's input: decoding, eval preprocessing, batched crops
    views       training views: drawn per sample, made into pixels, erased, mixed
    models      timm models by name, the CIFAR networks, checkpoints
    weak        the weak labels: outputs and statistics, labelling, ensembles, selection, the online teacher
    loaders     loading processes, the labelling and evaluation loader, the training stream and its join
    evaluation  top-1/top-5 of a model on shards, the few-shot protocol
    train       a training run: its inputs, step batches, losses, optimizer, recipes, runs, resumption
    report      what report and inspect read and draw
"""
