"""Level 2 of the report: 14 celebrity faces, DenseNet/ResNet fine-tuned on 220 images.

Data: the Kaggle dataset "14-celebrity-faces-dataset", a zip holding
data/train/<person>/*.jpg and data/val/<person>/*.jpg (220 train, 70 val images). The
zip is read as it is: no need to unzip it. Any dataset in that layout works.

Each line below is one of the report's hand sweeps; the comment says what it found.
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


def hyperparameters(hp):
    hp.Choice("backbone", ["DenseNet201", "DenseNet121", "ResNet50"])  # DenseNet201 ~+10% over 121
    hp.Choice("weights", ["imagenet"])  # beat DenseNet-specific weights; a local .h5: --set weights=PATH
    hp.Choice("image_size", [256, 224])  # 256 better
    hp.Choice("batch_size", [16, 8, 32, 64])  # 16 best; 32 and 64 worse
    hp.Int("head_width", 128, 8192, sampling="log")  # 4096 best
    hp.Float("dropout", 0.2, 0.5, step=0.1)  # 0.2 best
    hp.Fixed("head_layers", 1)
    hp.Fixed("optimizer", "adam")
    hp.Float("learning_rate", 1e-5, 1e-3, sampling="log")  # report: Adam 1e-4
    hp.Fixed("augmentation", "faces")  # rotation 10, zoom 0.1, shift 0.1, horizontal flip only
    hp.Fixed("fine_tune", "all")
