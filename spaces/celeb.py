"""Level 2 of the report: 14 celebrity faces, DenseNet/ResNet fine-tuned on 220 images.

Data: the Kaggle dataset "14-celebrity-faces-dataset", a zip holding
data/train/<person>/*.jpg and data/val/<person>/*.jpg (220 train, 70 val images). The
zip is read as it is: no need to unzip it. Any dataset in that layout works.

Each line below is one of the report's hand sweeps; the comment says what it found.
The report's ResNet50 started from a local file (Kaggle "keras-pretrained-models"):

    python -m search.run spaces/celeb.py --data ~/celeb.zip --set backbone=ResNet50 \\
        --set weights=~/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5
"""

from search import Data, Search

data = Data(
    "data/14-celebrity-faces-dataset.zip",
    hint=(
        'download the Kaggle dataset "14-celebrity-faces-dataset" '
        "(kaggle datasets download -d <owner>/14-celebrity-faces-dataset) "
        "and pass the zip or its folder with --data PATH"
    ),
)
search = Search(algorithm="bayesian", max_trials=30, epochs=45, early_stopping=8)  # 45 epochs best; more overfit
# 70 val images decide every comparison here; folds=5 scores each trial on all 290 images
# (out of fold) at 5x the training: worth it for the final few trials (docs/folds.md).

DENSENETS = ["DenseNet201", "DenseNet121"]


def hyperparameters(hp):
    hp.Choice("backbone", ["DenseNet201", "DenseNet121", "ResNet50"])  # DenseNet201 ~+10% over 121
    hp.Choice("weights", ["imagenet"])  # beat DenseNet-specific weights; a local .h5: --set weights=PATH
    hp.Choice("image_size", [256, 224])  # 256 better
    hp.Choice("batch_size", [16, 8, 32, 64])  # 16 best; 32 and 64 worse
    hp.Fixed("augmentation", "faces")  # rotation 10, zoom 0.1, shift 0.1, horizontal flip only
    hp.Fixed("fine_tune", "all")
    hp.Fixed("optimizer", "adam")
    # DenseNets: GAP -> Dropout -> Dense(width) -> Dropout -> softmax, Adam 1e-4.
    hp.Int("head_width", 128, 8192, sampling="log", parent_name="backbone", parent_values=DENSENETS)  # 4096 best
    hp.Float("dropout", 0.2, 0.5, step=0.1, parent_name="backbone", parent_values=DENSENETS)  # 0.2 best
    hp.Fixed("head_layers", 1, parent_name="backbone", parent_values=DENSENETS)
    hp.Float("learning_rate", 1e-5, 1e-3, sampling="log", parent_name="backbone", parent_values=DENSENETS)
    # ResNet50: GAP -> Dense 2048 -> Dropout 0.5 -> Dense 1024 -> Dropout 0.5 -> softmax, Adam 3e-5 (val 0.7656).
    hp.Fixed("head_layers", 2, parent_name="backbone", parent_values=["ResNet50"])  # widths halve: 2048, 1024
    hp.Fixed("head_width", 2048, parent_name="backbone", parent_values=["ResNet50"])
    hp.Fixed("dropout", 0.5, parent_name="backbone", parent_values=["ResNet50"])
    hp.Fixed("learning_rate", 3e-5, parent_name="backbone", parent_values=["ResNet50"])
