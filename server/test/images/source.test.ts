import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ImageInputError, parseImageSource } from '../../src/images/index.js';

const FIELD = 'input.image_urls[0]';

function refusal(fn: () => unknown): ImageInputError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ImageInputError);
    return err as ImageInputError;
  }
  throw new Error('expected an ImageInputError');
}

describe('parseImageSource: URLs', () => {
  it('accepts http and https URLs as-is', () => {
    const src = parseImageSource('https://example.com/a.png?x=1', FIELD);
    expect(src).toEqual({ kind: 'url', url: new URL('https://example.com/a.png?x=1') });
    expect(parseImageSource('  HTTP://Example.COM/b.jpg ', FIELD)).toMatchObject({ kind: 'url' });
  });

  it('normalises numeric IP spellings through WHATWG URL so the guard sees 127.0.0.1', () => {
    for (const spelling of ['http://2130706433/', 'http://0x7f.1/', 'http://017700000001/', 'http://127.1/']) {
      const src = parseImageSource(spelling, FIELD);
      expect(src.kind === 'url' && src.url.hostname).toBe('127.0.0.1');
    }
  });

  it.each([
    ['ftp://example.com/a.png', /scheme 'ftp'/],
    ['file:///etc/passwd', /scheme 'file'/],
    ['javascript:alert(1)', /scheme 'javascript'/],
    ['gopher://127.0.0.1:6379/_INFO', /scheme 'gopher'/],
    ['http://user:pw@example.com/a.png', /credentials/],
    ['https://user@example.com/a.png', /credentials/],
    ['http://', /not a valid URL/],
    ['http://exa mple.com/', /not a valid URL/],
  ])('refuses %s', (value, reason) => {
    const err = refusal(() => parseImageSource(value, FIELD));
    expect(err.field).toBe(FIELD);
    expect(err.reason).toMatch(reason);
    expect(err.message).toBe(`${FIELD}: ${err.reason}`);
  });

  it('refuses empty and whitespace-only values', () => {
    expect(refusal(() => parseImageSource('', FIELD)).reason).toBe('is empty');
    expect(refusal(() => parseImageSource(' \n\t', FIELD)).reason).toBe('is empty');
  });
});

describe('parseImageSource: data URIs', () => {
  const png = Buffer.from('89504e470d0a1a0a0000', 'hex');

  it.each(['image/png', 'image/jpeg', 'image/webp', 'image/gif', 'image/avif', 'image/tiff', 'IMAGE/PNG'])(
    'accepts %s',
    (mime) => {
      const src = parseImageSource(`data:${mime};base64,${png.toString('base64')}`, FIELD);
      expect(src).toEqual({ kind: 'inline', bytes: png, mime: mime.toLowerCase() });
    },
  );

  it('maps image/jpg to image/jpeg and tolerates parameters', () => {
    const src = parseImageSource(`data:image/jpg;name=a.jpg;base64,${png.toString('base64')}`, FIELD);
    expect(src).toMatchObject({ kind: 'inline', mime: 'image/jpeg' });
  });

  it.each([
    ['data:text/html;base64,PGgxPg==', /MIME type 'text\/html' is not accepted/],
    ['data:image/svg+xml;base64,PHN2Zy8+', /MIME type 'image\/svg\+xml'/],
    ['data:application/octet-stream;base64,AAAA', /MIME type/],
    ['data:;base64,AAAA', /no MIME type/],
    ['data:image/png,rawbytes', /must be base64-encoded/],
    ['data:image/png;base64', /no ',' separator/],
    ['data:image/png;base64,', /empty/],
    ['data:image/png;base64,AA*A', /invalid base64/],
    ['data:image/png;bad param;base64,AAAA', /malformed parameter/],
  ])('refuses %s', (value, reason) => {
    expect(refusal(() => parseImageSource(value, FIELD)).reason).toMatch(reason);
  });
});

describe('parseImageSource: raw base64', () => {
  it('decodes strict base64, with MIME-style line breaks', () => {
    const bytes = Buffer.from(Array.from({ length: 200 }, (_, i) => i));
    const wrapped = bytes.toString('base64').replace(/.{76}/g, '$&\r\n');
    expect(parseImageSource(wrapped, FIELD)).toEqual({ kind: 'inline', bytes });
  });

  it.each([
    ['QUJD', true],
    ['QUI=', true],
    ['QQ==', true],
    ['QUJ', false], // no padding
    ['QR==', false], // non-canonical trailing bits
    ['QUJ=', false], // non-canonical trailing bits
    ['Q===', false],
    ['QU=D', false], // padding in the middle
    ['QUJD_-__', false], // base64url alphabet
    ['QUJD!', false],
  ])('%s accepted=%s', (value, ok) => {
    if (ok) expect(parseImageSource(value, FIELD).kind).toBe('inline');
    else expect(refusal(() => parseImageSource(value, FIELD)).reason).toMatch(/invalid base64/);
  });

  it('refuses a 50 MB base64 string on its length, fast', () => {
    // As a request body delivers it: a flat string from JSON.parse, not a lazy repeat() rope.
    const huge = JSON.parse(`"${'A'.repeat(50 * 1024 * 1024)}"`) as string;
    const started = performance.now();
    const err = refusal(() => parseImageSource(huge, FIELD));
    expect(performance.now() - started).toBeLessThan(50);
    expect(err.reason).toMatch(/too large: ~37\.5 MiB exceeds 20\.0 MiB/);
  });

  it('applies a configurable cap on the decoded size', () => {
    const b64 = Buffer.alloc(1001).toString('base64');
    expect(refusal(() => parseImageSource(b64, FIELD, { maxInlineBytes: 1000 })).reason).toMatch(/too large/);
    expect(parseImageSource(b64, FIELD, { maxInlineBytes: 1001 }).kind).toBe('inline');
  });
});

describe('parseImageSource: properties', () => {
  const bytesArb = fc.uint8Array({ minLength: 1, maxLength: 600 }).map((a) => Buffer.from(a));

  it('round-trips any bytes as raw base64, wrapped base64 and a data: URI', () => {
    fc.assert(
      fc.property(bytesArb, fc.integer({ min: 4, max: 100 }), (bytes, width) => {
        const b64 = bytes.toString('base64');
        expect(parseImageSource(b64, FIELD)).toEqual({ kind: 'inline', bytes });
        const wrapped = b64.replace(new RegExp(`.{${width}}`, 'g'), '$&\n');
        expect(parseImageSource(wrapped, FIELD)).toEqual({ kind: 'inline', bytes });
        expect(parseImageSource(`data:image/webp;base64,${b64}`, FIELD)).toEqual({ kind: 'inline', bytes, mime: 'image/webp' });
      }),
    );
  });

  it('accepts only canonical encodings: whatever is accepted re-encodes to the same text', () => {
    const alphabetish = fc.string({ unit: fc.constantFrom(...'ABCDEFGHQRSTUVWxyz0189+/='.split('')), minLength: 1, maxLength: 24 });
    fc.assert(
      fc.property(alphabetish, (text) => {
        try {
          const src = parseImageSource(text, FIELD);
          expect(src.kind === 'inline' && src.bytes.toString('base64')).toBe(text);
        } catch (err) {
          expect(err).toBeInstanceOf(ImageInputError);
        }
      }),
    );
  });

  it('refuses a valid encoding with any foreign character inserted', () => {
    const foreign = fc.constantFrom(...'!"#$%&\'()*,-.;<>?@[\\]^_`{|}~\u00e9\u0000'.split(''));
    fc.assert(
      fc.property(bytesArb, foreign, fc.nat(), (bytes, ch, pos) => {
        const b64 = bytes.toString('base64');
        const at = pos % (b64.length + 1);
        const bad = b64.slice(0, at) + ch + b64.slice(at);
        const err = refusal(() => parseImageSource(bad, FIELD));
        expect(err.field).toBe(FIELD);
      }),
    );
  });

  it('refuses every data: MIME type outside the raster list', () => {
    const accepted = new Set(['image/png', 'image/jpeg', 'image/jpg', 'image/pjpeg', 'image/webp', 'image/gif', 'image/avif', 'image/tiff']);
    const mime = fc
      .tuple(fc.constantFrom('image', 'text', 'application', 'x'), fc.stringMatching(/^[a-z0-9.+-]{1,12}$/))
      .map(([a, b]) => `${a}/${b}`)
      .filter((m) => !accepted.has(m));
    fc.assert(
      fc.property(mime, (m) => {
        expect(refusal(() => parseImageSource(`data:${m};base64,AAAA`, FIELD)).reason).toMatch(/MIME type/);
      }),
    );
  });

  it('never throws anything but ImageInputError, whatever the string', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.webUrl()), (value) => {
        try {
          parseImageSource(value, FIELD);
        } catch (err) {
          expect(err).toBeInstanceOf(ImageInputError);
          expect((err as ImageInputError).field).toBe(FIELD);
        }
      }),
    );
  });

  it('enforces the size cap exactly on the decoded length', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 400 }), fc.integer({ min: 1, max: 400 }), (n, cap) => {
        const b64 = Buffer.alloc(n, 7).toString('base64');
        if (n <= cap) expect(parseImageSource(b64, FIELD, { maxInlineBytes: cap }).kind).toBe('inline');
        else expect(refusal(() => parseImageSource(b64, FIELD, { maxInlineBytes: cap })).reason).toMatch(/too large/);
      }),
    );
  });
});
