"""Level 1 of the report: 104 flowers ("Petals to the Metal"), three ImageNet backbones.

Data: the Kaggle competition "tpu-getting-started" (Petals to the Metal), folder
tfrecords-jpeg-331x331/{train,val,test}/*.tfrec: 12,753 train, 3,712 val and 7,382 test
images of 331x331 px. Records carry `image` (JPEG) and `class` (int64); test ones `id`.

The report trained each backbone once, 25 epochs with its own head, and averaged the two
best; this space is those three runs as one search. Then, as the report did:

    python -m search.run spaces/flowers.py --data ~/petals         # the three models
    python -m search.ensemble spaces/flowers.py --refit           # best ones, refit on train+val
    python -m search.predict spaces/flowers.py --images ~/petals/tfrecords-jpeg-331x331/test
                                                                   # -> submission.csv (id,label)

EfficientNetB7 comes from the `efficientnet` package with its noisy-student weights, as in
the report; keras.applications' ImageNet one is `--set backbone=EfficientNetB7`.
"""

from search import Data, Search

CLASSES = [
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "wild geranium",
    "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle",
    "snapdragon", "colt's foot", "king protea", "spear thistle", "yellow iris",
    "globe-flower", "purple coneflower", "peruvian lily", "balloon flower", "giant white arum lily",
    "fire lily", "pincushion flower", "fritillary", "red ginger", "grape hyacinth",
    "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke", "sweet william",
    "carnation", "garden phlox", "love in the mist", "cosmos", "alpine sea holly",
    "ruby-lipped cattleya", "cape flower", "great masterwort", "siam tulip", "lenten rose",
    "barberton daisy", "daffodil", "sword lily", "poinsettia", "bolero deep blue",
    "wallflower", "marigold", "buttercup", "daisy", "common dandelion",
    "petunia", "wild pansy", "primula", "sunflower", "lilac hibiscus",
    "bishop of llandaff", "gaura", "geranium", "orange dahlia", "pink-yellow dahlia",
    "cautleya spicata", "japanese anemone", "black-eyed susan", "silverbush", "californian poppy",
    "osteospermum", "spring crocus", "iris", "windflower", "tree poppy",
    "gazania", "azalea", "water lily", "rose", "thorn apple",
    "morning glory", "passion flower", "lotus", "toad lily", "anthurium",
    "frangipani", "clematis", "hibiscus", "columbine", "desert-rose",
    "tree mallow", "magnolia", "cyclamen", "watercress", "canna lily",
    "hippeastrum", "bee balm", "pink quill", "foxglove", "bougainvillea",
    "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower",
    "trumpet creeper", "blackberry lily", "common tulip", "wild rose",
]  # fmt: skip

data = Data(
    "data/petals",
    layout="tfrecord",
    train="tfrecords-jpeg-331x331/train/*.tfrec",
    val="tfrecords-jpeg-331x331/val/*.tfrec",
    test="tfrecords-jpeg-331x331/test/*.tfrec",
    class_names=CLASSES,
    hint=(
        'download the Kaggle competition data "tpu-getting-started" (Petals to the Metal: '
        "kaggle competitions download -c tpu-getting-started), unzip it and pass the folder "
        "holding tfrecords-jpeg-331x331/ with --data PATH"
    ),
)
# One run per backbone, 25 epochs each. Random search never repeats a combination, so 3
# trials are the 3 backbones; unlike grid (Keras Tuner #1055) it resumes after a crash.
# Scored by macro F1, as the competition is: early stopping, the epoch kept and the ensemble follow it.
search = Search(algorithm="random", max_trials=3, epochs=25, objective="val_f1")

FINE_TUNED = ["DenseNet201", "efficientnet.EfficientNetB7", "EfficientNetB7"]


def hyperparameters(hp):
    hp.Choice("backbone", ["DenseNet201", "efficientnet.EfficientNetB7", "Xception"])  # val 0.945, 0.950, 0.836
    hp.Fixed("weights", "noisy-student", parent_name="backbone", parent_values=["efficientnet.EfficientNetB7"])
    hp.Fixed("image_size", 331)
    hp.Fixed("batch_size", 16)  # per replica: 128 on a TPU v3-8
    hp.Fixed("schedule", "warmup_exp")  # 1e-5 -> peak in 5 epochs, then x0.8 an epoch; beat a constant rate
    hp.Fixed("augmentation", "flowers")  # crop, rot90, flips, transpose
    # Xception: frozen, GAP -> BN -> Dense 512 -> BN -> Dropout 0.2 -> softmax, RMSprop 5e-4.
    hp.Fixed("fine_tune", "frozen", parent_name="backbone", parent_values=["Xception"])
    hp.Fixed("head_batchnorm", True, parent_name="backbone", parent_values=["Xception"])
    hp.Fixed("head_layers", 1, parent_name="backbone", parent_values=["Xception"])
    hp.Fixed("head_width", 512, parent_name="backbone", parent_values=["Xception"])
    hp.Fixed("dropout", 0.2, parent_name="backbone", parent_values=["Xception"])
    hp.Fixed("optimizer", "rmsprop", parent_name="backbone", parent_values=["Xception"])
    hp.Fixed("learning_rate", 5e-4, parent_name="backbone", parent_values=["Xception"])
    # DenseNet201 and EfficientNetB7: all trained, GAP -> softmax, Adam at LR_MAX 5e-5 x replicas.
    hp.Fixed("head_layers", 0, parent_name="backbone", parent_values=FINE_TUNED)
    hp.Fixed("dropout", 0.0, parent_name="backbone", parent_values=FINE_TUNED)
    hp.Fixed("learning_rate", 5e-5, parent_name="backbone", parent_values=FINE_TUNED)
