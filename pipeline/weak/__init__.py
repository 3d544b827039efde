"""The weak labels: what the weak model outputs and the statistics stored with it, labelling a store, ensembles of stores, choosing which labels to trust, the online teacher."""
