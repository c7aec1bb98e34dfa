/* HDF5 helpers shared by the dataset reader and writer (private). */
#ifndef LH_DATASETS_DATASET_H5_H
#define LH_DATASETS_DATASET_H5_H

#include <hdf5.h>
#include <stddef.h>

#define LH_DATASET_VERSION_ATTR "lorahost_dataset_version"
#define LH_DATASET_MAX_CAPTION (1 << 20) /* bytes */

/* The first message of HDF5's error stack into buf[256] (then cleared). */
const char *lh__h5_reason(char *buf);
/* Silence HDF5's error printing and turn off filter plugins. */
void lh__h5_quiet(void);
/* Variable-length UTF-8 string type (close with H5Tclose). */
hid_t lh__h5_str_type(void);
int lh__utf8_valid(const char *s, size_t n);

#endif
