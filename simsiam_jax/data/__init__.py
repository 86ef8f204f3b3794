"""The host input pipeline: data sources (datasets), the augmentation recipe as TensorFlow
ops (augmentations), the tf.data streams of views and evaluation batches (input_pipeline),
and the normalisation done on the device (preprocess).

The package itself holds only what the config checks and the command line's error exit
need, so that they load without TensorFlow: `DataError` and the choices of the data fields.
"""


class DataError(ValueError):
  """A data source cannot be read as the config says; the message names the field or path."""


# config.data.jpeg_dct_method: libjpeg's accurate integer IDCT, as PIL decodes (torchvision),
# or the fast one (a few levels off PIL's).
JPEG_DCT_METHODS = ('INTEGER_ACCURATE', 'INTEGER_FAST')
