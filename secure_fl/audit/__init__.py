"""Attacks run against what the threat model gives an attacker: the payloads the aggregator
carried (taken from the carrier's tap) and the released models, never a site's internals.

- :mod:`.inversion`  gradient inversion of one site's update (Geiping et al. 2020)
- :mod:`.membership` membership inference on a released model (loss threshold, Yeom et al. 2018, a baseline)
- :mod:`.lira`       LiRA membership inference (Carlini et al. 2022) from shadow models
- :mod:`.shadows`    shadow federations of the same protocol, trained by the tool, for LiRA
- :mod:`.epsilon`    one-run empirical ε lower bound (Steinke, Nasr, Jagielski 2023)
- :mod:`.metrics`    PSNR, SSIM, ROC / TPR at a fixed FPR
- :mod:`.scenario`   one tapped round of a real protocol (the attacker's view), and the audits end to end
"""
