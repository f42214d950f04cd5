"""Every anonymizer a table compares, each a video in, a video of the same shape out.

* STPrivacy, the paper's method: the model in :mod:`stprivacy.model`, its three-phase training
  in :mod:`stprivacy.train`;
* :mod:`~stprivacy.methods.baselines`: the paper's fixed transformations (downsampling, blur,
  blackening) and the controls beside them;
* :mod:`~stprivacy.methods.blackening`: the face detector the blackening baseline uses.

How each is judged is in :mod:`stprivacy.attack`.
"""
