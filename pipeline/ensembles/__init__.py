"""How `train --labels A,B,... --ensemble HOW` combines several stores' weak outputs, when the
combination is fixed: one class per way, in its own file (mean_prob.py, mean_logit.py, vote.py),
registered by name in registry.py. A way of your own needs no fork: a subclass of
`base.Combination`, named as `--ensemble package.module:Name` or registered by an entry point in the
group `w2s_pipe.ensembles`. (The ways combined with the student at each step, learned weights and
specialists, are weak/members.py's.) Nothing here imports torch: a combination computes with the
tensor it is given.
"""
