"""Level 3 of the report: a face classifier small enough for a phone, accuracy against MB.

Same data as spaces/celeb.py (Kaggle "14-celebrity-faces-dataset", 220 train and 70 val
images of 14 people). The report fine-tuned MobileNet (3.24M parameters) to 0.7656 val
accuracy, against DenseNet201's 26.2M at Level 2. This space asks what each MB buys: NSGA-II
searches val accuracy against the saved model size, and the result is a Pareto front
(runs/celeb_mobile/pareto.csv and pareto.png, also in MLflow).

The rest of Level 3, once the search has run:

    python -m search.export spaces/celeb_mobile.py        # .tflite float32/float16/int8, sizes side by side
    python -m search.featuremaps spaces/celeb_mobile.py --image face.jpg   # the report's feature-map pictures
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
search = Search(
    algorithm="nsga2",  # multi-objective: a front, not one winner
    minimize="size_mb",  # against the saved model's MB ("params" and "latency_ms" also work)
    max_trials=40,
    epochs=50,  # the report's 50, cut short by early stopping
    early_stopping=8,
)


def hyperparameters(hp):
    hp.Choice("backbone", ["MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large"])  # report: MobileNet
    hp.Fixed("weights", "imagenet")
    hp.Choice("image_size", [224, 160, 128])  # smaller inputs: same MB, less latency
    hp.Fixed("batch_size", 16)  # report: 16
    hp.Fixed("head_layers", 0)  # report: GAP, Dropout, Dense 14 softmax
    hp.Float("dropout", 0.2, 0.6, step=0.1)  # report: 0.6 fixed MobileNet's overfitting
    hp.Fixed("optimizer", "rmsprop")
    hp.Fixed("learning_rate", 5e-4)  # report: RMSprop 5e-4, the first step
    hp.Fixed("schedule", "step")  # 5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5 every 4 epochs; beat warmup+decay here
    hp.Fixed("augmentation", "faces")  # rotation 10, zoom 0.1, shift 0.1, horizontal flip only
    hp.Fixed("fine_tune", "all")
