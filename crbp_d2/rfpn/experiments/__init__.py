"""The R-FPN experiments, each run by a program in ``crbp_d2.cli`` (``tools/NAME.py``):

- :mod:`.benchmark`: memory and time of one training step of R-FPN per variant
  (``benchmark_rfpn``);
- :mod:`.cpu_protocol`: the quick recipes trained and evaluated on CPU (``rfpn_cpu_protocol``);
- :mod:`.finetune`: a fresh recurrent head on a trained FPN against R-FPN from scratch
  (``rfpn_finetune``);
- :mod:`.cuda_check`: the R-FPN part of the CUDA check (``cuda_rfpn_check``);
- :mod:`.resume`: is a resumed run the uninterrupted one on this device (``rfpn_resume_check``).
"""
