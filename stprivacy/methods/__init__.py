"""Every anonymizer a table compares, each a video in, a video of the same shape out.

* STPrivacy, the paper's method: the model in :mod:`stprivacy.model`, its three-phase training
  in :mod:`stprivacy.train`;
* the learned comparison methods, each trained by its own paper's recipe
  (:mod:`~stprivacy.methods.learned` registers them and trains, saves and loads any of them):
  :mod:`~stprivacy.methods.vita` (Wu et al., TPAMI 2020), :mod:`~stprivacy.methods.spact`
  (Dave et al., CVPR 2022), :mod:`~stprivacy.methods.collective` (Zhang et al., ICDM 2019, adapted
  to video);
* :mod:`~stprivacy.methods.baselines`: the fixed transformations: the paper's downsampling,
  Blackening, StrongBlur and WeakBlur (inside the person region, as the paper takes them from
  SPAct, and of the whole frame), face blackening, and the controls that show what learning adds
  (grey, grey + blur, the oracle sparsifier + grey + blur);
* :mod:`~stprivacy.methods.person_detection`, :mod:`~stprivacy.methods.blackening`: the person
  and face detectors those baselines use on real video (OpenCV's, shipped with it).

How each is judged is in :mod:`stprivacy.attack`.
"""
