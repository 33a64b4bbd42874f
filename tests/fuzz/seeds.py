"""seeds.py OUT MAX [ITK_DATA]: seed inputs for the image-reader fuzz targets,
one folder per reader under OUT (nifti, mha, png, dicom).

Real test files come first: nibabel's and pydicom's (installed with them),
and ITK's example data when `lumen data fetch itk_examples` has unpacked it
(ITK_DATA). Files over MAX bytes are left out (libFuzzer would cut them
short). Then files written here for what those lack: other byte orders and
types, scaling, NIfTI-2, MetaImage data in other files or compressed, the PNG
colour types, bit depths and interlacing. tests/fuzz/seeds.lua adds files
written by lumen itself."""
import glob, gzip, os, shutil, struct, sys, zlib

import numpy as np
import nibabel as nib

out, limit = sys.argv[1], int(sys.argv[2])
itk = sys.argv[3] if len(sys.argv) > 3 else ''
NIBABEL = '/usr/lib/python3/dist-packages/nibabel'
PYDICOM = '/usr/lib/python3/dist-packages/pydicom/data/test_files'


def folder(reader):
    d = os.path.join(out, reader)
    os.makedirs(d, exist_ok=True)
    return d


def put(reader, name, data):
    if len(data) <= limit:
        with open(os.path.join(folder(reader), name), 'wb') as f:
            f.write(data)


def copy(reader, paths, prefix=''):
    for p in sorted(paths):
        if os.path.isfile(p) and os.path.getsize(p) <= limit:
            shutil.copy(p, os.path.join(folder(reader), prefix + os.path.basename(p)))


rng = np.random.default_rng(4)

# ---- NIfTI --------------------------------------------------------------
copy('nifti', glob.glob(NIBABEL + '/tests/data/*.nii') + glob.glob(NIBABEL + '/tests/data/*.nii.gz')
     + glob.glob(NIBABEL + '/tests/data/*.hdr'))
if itk:
    copy('nifti', glob.glob(itk + '/*.nii') + glob.glob(itk + '/*.nii.gz'), 'itk_')


def nifti(name, arr, cls=nib.Nifti1Image, affine=None, codes=(2, 2), slope=None, gz=False):
    img = cls(arr, np.diag([2.0, 3.0, 4.0, 1.0]) if affine is None else affine)
    img.header.set_qform(img.affine, code=codes[0])
    img.header.set_sform(img.affine, code=codes[1])
    if slope:
        img.header.set_slope_inter(*slope)
    data = img.to_bytes()
    put('nifti', name, gzip.compress(data) if gz else data)


vol = rng.integers(-300, 300, (5, 4, 3))
nifti('be_int16.nii', vol.astype('>i2'))
nifti('uint16_scaled.nii', (vol + 300).astype('<u2'), slope=(0.5, -10.0))
nifti('int8_4d.nii', rng.integers(-128, 128, (3, 4, 2, 2)).astype('i1'))
nifti('qform_only.nii', vol.astype('f4'), codes=(1, 0))
nifti('no_form.nii', vol.astype('f4'), codes=(0, 0))
nifti('nifti2_be_f8.nii', vol.astype('>f8'), cls=nib.Nifti2Image)
nifti('uint32.nii.gz', (vol + 300).astype('u4'), gz=True)
nifti('complex64.nii', vol.astype('c8'))
one = nib.Nifti1Image(vol.astype('u1'), np.eye(4)).to_bytes()
put('nifti', 'two_members.nii.gz', gzip.compress(one[:200]) + gzip.compress(one[200:]))

# ---- MetaImage ------------------------------------------------------------
if itk:
    copy('mha', glob.glob(itk + '/*.mha'), 'itk_')
    # .mhd with its data file beside it: one .mha with the data appended
    for mhd in sorted(glob.glob(itk + '/*.mhd')):
        text = open(mhd, 'rb').read()
        lines = text.rstrip(b'\n').split(b'\n')
        key, _, name = lines[-1].partition(b'=')
        raw = os.path.join(itk, name.strip().decode())
        if key.strip() == b'ElementDataFile' and os.path.isfile(raw):
            head = b'\n'.join(lines[:-1] + [b'ElementDataFile = LOCAL']) + b'\n'
            put('mha', 'itk_' + os.path.basename(mhd)[:-4] + '.mha', head + open(raw, 'rb').read())


def mha(name, fields, data=b''):
    put('mha', name, ''.join('%s = %s\n' % kv for kv in fields).encode() + data)


# the companion files fuzz_image.c writes beside each input: data.raw
# (4096 bytes), slice0.raw and slice1.raw (1024 each), data.zraw (zlib of
# the 4096 bytes of data.raw)
mha('external.mha', [('ObjectType', 'Image'), ('NDims', 2), ('DimSize', '32 32'), ('ElementType', 'MET_FLOAT'),
                     ('ElementDataFile', 'data.raw')])
mha('external_offset.mha', [('NDims', 3), ('DimSize', '10 10 10'), ('HeaderSize', 96), ('ElementType', 'MET_SHORT'),
                            ('ElementDataFile', 'data.raw')])
mha('list.mha', [('NDims', 3), ('DimSize', '32 32 2'), ('ElementType', 'MET_UCHAR'), ('ElementSpacing', '0.5 0.5 2'),
                 ('ElementDataFile', 'LIST')], b'slice0.raw\nslice1.raw\n')
mha('external_z.mha', [('NDims', 2), ('DimSize', '64 64'), ('ElementType', 'MET_UCHAR'), ('CompressedData', 'True'),
                       ('CompressedDataSize', '%d' % len(zlib.compress(bytes(4096)))), ('ElementDataFile', 'data.zraw')])
payload = rng.integers(0, 1000, (3, 4, 5)).astype('>i2').tobytes()
mha('msb.mha', [('ObjectType', 'Image'), ('NDims', 3), ('BinaryData', 'True'), ('BinaryDataByteOrderMSB', 'True'),
                ('TransformMatrix', '0 1 0 1 0 0 0 0 1'), ('Offset', '-10 20 5.5'), ('ElementSpacing', '1 2 3'),
                ('DimSize', '5 4 3'), ('ElementType', 'MET_SHORT'), ('ElementDataFile', 'LOCAL')], payload)
z = zlib.compress(rng.integers(0, 255, 2 * 3 * 4 * 3).astype('u1').tobytes())
mha('compressed_rgb.mha', [('NDims', 3), ('DimSize', '2 3 4'), ('ElementNumberOfChannels', 3),
                           ('ElementType', 'MET_UCHAR'), ('CompressedData', 'True'), ('CompressedDataSize', len(z)),
                           ('ElementDataFile', 'LOCAL')], z)
mha('compressed_nosize.mha', [('NDims', 2), ('DimSize', '6 5'), ('ElementType', 'MET_DOUBLE'),
                              ('CompressedData', 'True'), ('ElementDataFile', 'LOCAL')],
    zlib.compress(rng.random(30).tobytes()))
mha('headersize_tail.mha', [('NDims', 2), ('DimSize', '4 4'), ('HeaderSize', -1), ('ElementType', 'MET_ULONG_LONG'),
                            ('ElementDataFile', 'LOCAL')], bytes(range(128)))

# ---- PNG ------------------------------------------------------------------
copy('png', glob.glob('/usr/lib/python3/dist-packages/scipy/ndimage/tests/*.png'))
if itk:
    copy('png', glob.glob(itk + '/*.png'), 'itk_')


def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)


def png(name, w, h, depth, ctype, raw, extra=b'', interlace=0):
    put('png', name, b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, depth, ctype, 0, 0, interlace))
        + extra + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


def rows(a, depth, filt=0):
    return b''.join(bytes([filt]) + r.astype('>u2' if depth == 16 else 'u1').tobytes() for r in a)


png('grey16.png', 7, 5, 16, 0, rows(rng.integers(0, 65536, (5, 7)), 16))
png('rgb16_sub.png', 3, 4, 16, 2, rows(rng.integers(0, 65536, (4, 3, 3)), 16, 1))
png('ga8.png', 5, 6, 8, 4, rows(rng.integers(0, 256, (6, 5, 2)), 8, 2))
png('rgba8.png', 4, 4, 8, 6, rows(rng.integers(0, 256, (4, 4, 4)), 8, 4))
pal = chunk(b'PLTE', rng.integers(0, 256, 12).astype('u1').tobytes()) + chunk(b'tRNS', b'\x00\x80')
png('palette_trns.png', 5, 3, 8, 3, rows(rng.integers(0, 4, (3, 5)), 8), pal)
for bits in (1, 2, 4):
    g = rng.integers(0, 2 ** bits, (5, 11))
    raw = b''
    for r in g:
        acc = ''.join(format(int(v), '0%db' % bits) for v in r)
        acc += '0' * (-len(acc) % 8)
        raw += b'\0' + bytes(int(acc[i:i + 8], 2) for i in range(0, len(acc), 8))
    png('grey%d.png' % bits, 11, 5, bits, 0, raw)


def adam7(a, depth):
    raw = b''
    for y0, x0, dy, dx in ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
                           (1, 0, 2, 1)):
        sub = a[y0::dy, x0::dx]
        if sub.size:
            raw += rows(sub, depth)
    return raw


png('interlaced_rgb8.png', 9, 11, 8, 2, adam7(rng.integers(0, 256, (11, 9, 3)), 8), interlace=1)
png('interlaced_grey16.png', 13, 10, 16, 0, adam7(rng.integers(0, 65536, (10, 13)), 16), interlace=1)

# ---- DICOM ----------------------------------------------------------------
copy('dicom', glob.glob(PYDICOM + '/*.dcm') + glob.glob(NIBABEL + '/nicom/tests/data/*.dcm'))
for p in sorted(glob.glob(NIBABEL + '/nicom/tests/data/*.dcm.gz')):
    put('dicom', os.path.basename(p)[:-3], gzip.open(p).read())
