"""Human evaluation campaigns and annotation queues, stored in serve's database.

People decide here: reviewers rate two anonymous answers to one prompt (campaigns),
annotators label rows or write answers (queues). Every saved judgement is a row in the same
database as serve's completions and feedback, so it is training data the moment it is
saved: ``export.py`` turns ratings into DPO pairs, corrections into SFT rows and labels into
a new dataset version. The statistics (win rates, Bradley–Terry, kappa) are in
``stats.py``; who gets which item next (leases, double annotation) in ``work.py``.
"""
